// CacheFuzzer: a seeded random driver of every PagedKvCache operation against CacheModel.
//
// Each Step() picks one operation (add_sequence with and without stored logits, prompts drawn so
// that prefixes and whole prompts repeat; append; decode step = write the pending K/V, append_batch,
// batch metadata; fork (whole or a prefix); free; swap out / in; write_kv; mark_computed single and
// batch;
// store_logits; reset_prefix_cache; drain events), sometimes with a mistake the API defines an
// error for (unknown or duplicate seq_id, swapped-out sequence, repeated batch member, bad count).
// After it: CheckInvariants(), the model's check of the sequences it touched (all of them every
// 16 steps), and:
//   - a call that throws must throw the error the API defines (OutOfBlocksError only where
//     capacity can run out) and, with exclusive use, leave StateDigest unchanged;
//   - with exclusive use, CanAllocate / CanAppend true means the call must not run out of blocks;
//   - prefix hits cover whole blocks and fewer tokens than the prompt unless its logits were
//     stored (then exactly the stored logits come back).
// Any violation throws std::logic_error naming the seed, step and operation.
//
// Modes. Exclusive (one driver owns the cache): digests and capacity predictions are checked.
// Shared (several drivers, one per thread, on one cache; each owns the seq_ids from its id_base):
// those checks are off, everything else holds. sweep_faults (exclusive; in a program whose
// allocator calls fault_injection::Point()): every cache call runs with fault_injection::Arm(n)
// for n = 1, 2, ... until it passes all its fault points; each injected failure must leave the
// digest and the invariants as before.
// Thread safety: thread-compatible (one driver per thread; the cache it drives is thread-safe).
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ferrum_kv/cache_manager.h"
#include "fuzz/cache_model.h"

namespace ferrum_kv::fuzz {

struct FuzzCounts {
  int64_t steps = 0;
  int64_t errors = 0;          // calls that threw an error the API defines
  int64_t out_of_blocks = 0;   // of which OutOfBlocksError
  int64_t prefix_hit_tokens = 0;
  int64_t whole_prompt_hits = 0;
  // RunFuzz: from the caches' Stats(), the paths the run went through.
  int64_t evictions = 0;
  int64_t cow_copies = 0;
  int64_t swap_ins = 0;
  int64_t faults_injected = 0;  // sweep_faults: failures injected (each checked)
  // sweep_faults: per operation, the calls swept and the fault points they passed in all.
  std::map<std::string, std::pair<int64_t, int64_t>> fault_sites;
  // sweep_faults: per operation, the injected failures that left the cache changed (RunFuzz then
  // goes on with a fresh cache) and the first one's description.
  std::map<std::string, std::pair<int64_t, std::string>> violations;

  void Add(const FuzzCounts& other);
};

class CacheFuzzer {
 public:
  struct Options {
    bool exclusive = true;
    bool sweep_faults = false;
  };

  // Drives cache (which must outlive it) with seq_ids id_base, id_base + 1, ...
  CacheFuzzer(PagedKvCache* cache, SeqId id_base, uint64_t seed, Options options);

  void Step();
  const FuzzCounts& counts() const { return counts_; }

  // A random small configuration: geometry, dtype, eviction policy, prefix caching, events,
  // stored prompts and host tier all drawn from rng.
  static CacheConfig RandomConfig(std::mt19937_64& rng);

 private:
  enum class Expect { kSuccess, kUnknown, kInvalidArgument, kInvalidState, kOutOfBlocks };

  // Runs one cache call (under the fault sweep if enabled). Returns normally or rethrows the
  // call's own error.
  template <typename Call>
  void Run(const char* operation, Call&& call);
  // Runs call expecting `expect` (or, where may_run_out, OutOfBlocksError instead of success).
  // Returns true if it succeeded; checks a thrown error against the expectation and the digest.
  template <typename Call>
  bool Attempt(const char* operation, Expect expect, bool may_run_out, Call&& call);
  [[noreturn]] void Fail(const std::string& what) const;
  uint64_t Digest() const;

  // Operations.
  void AddSequence(bool with_logits);
  void Append();
  void DecodeStep();
  void Metadata();
  void Fork();
  void Free();
  void SwapOut();
  void SwapIn();
  void WriteKv();
  void MarkComputed();
  void MarkComputedBatch();
  void StoreLogits();
  void ResetPrefixCache();
  void DrainEvents();

  // Writes the K/V of positions [written, end) of a resident sequence and records them.
  void WriteRange(SeqId id, int64_t end);
  std::vector<int32_t> RandomPrompt();
  std::vector<int32_t> RandomTokens(int64_t n);
  SeqId NewId() { return next_id_++; }
  // A random held sequence (resident, swapped or either), or an id the cache does not hold.
  SeqId Pick(int which);  // 0 any, 1 resident, 2 swapped; -1 if there is none
  SeqId UnknownId() const { return next_id_ + 1000; }
  bool OneIn(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_) == 0; }
  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  void CheckTouched();

  PagedKvCache* const cache_;
  const CacheConfig config_;
  const Options options_;
  const uint64_t seed_;
  std::mt19937_64 rng_;
  SeqId next_id_;
  std::map<SeqId, ModelSequence> model_;
  std::vector<SeqId> touched_;            // ids the current step's calls name
  std::vector<std::vector<int32_t>> prefixes_;  // shared prompt beginnings
  std::vector<std::pair<std::string, std::vector<int32_t>>> recent_prompts_;
  const char* operation_ = "";
  int64_t out_of_blocks_seen_ = 0;  // counts_.out_of_blocks before the current step
  FuzzCounts counts_;
};

// Runs options.ops steps of exclusive CacheFuzzers, a fresh random config (RandomConfig) every
// ops_per_config steps (or after a strong-guarantee violation, which sweep_faults records in
// FuzzCounts::violations instead of throwing), all seeded from seed.
struct FuzzRunOptions {
  uint64_t seed = 1;
  int64_t ops = 10000;
  int64_t ops_per_config = 2000;
  bool sweep_faults = false;
};
FuzzCounts RunFuzz(const FuzzRunOptions& options);

}  // namespace ferrum_kv::fuzz
