"""Prefix caching: full-hit lookup latency, a whole-prompt hit, and a shared-system-prompt workload.

The benchmark lives in ferrum_kv.benchmarks.prefix_cache so that the installed `ferrum-kv bench` runs it too.
"""

from ferrum_kv.benchmarks.prefix_cache import main

if __name__ == "__main__":
    main()
