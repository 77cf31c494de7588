// Clang thread-safety annotations (after abseil's thread_annotations.h). They expand to nothing on
// compilers without the analysis; a clang build with -Wthread-safety checks them.
#pragma once

#if defined(__clang__)
#define FKV_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define FKV_THREAD_ANNOTATION(x)
#endif

#define FKV_CAPABILITY(x) FKV_THREAD_ANNOTATION(capability(x))
#define FKV_SCOPED_CAPABILITY FKV_THREAD_ANNOTATION(scoped_lockable)
#define FKV_GUARDED_BY(x) FKV_THREAD_ANNOTATION(guarded_by(x))
#define FKV_PT_GUARDED_BY(x) FKV_THREAD_ANNOTATION(pt_guarded_by(x))
#define FKV_REQUIRES(...) FKV_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define FKV_EXCLUDES(...) FKV_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define FKV_ACQUIRE(...) FKV_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define FKV_RELEASE(...) FKV_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define FKV_NO_THREAD_SAFETY_ANALYSIS FKV_THREAD_ANNOTATION(no_thread_safety_analysis)
