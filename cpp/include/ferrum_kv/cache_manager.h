// PagedKvCache: sequences, block tables, copy-on-write fork, swap to a host tier, batch metadata.
//
// A serving engine's scheduler drives it once per step: add_sequence for new requests,
// append_batch for a decode step, batch_metadata for the attention kernels, free_sequence when a
// request finishes, swap_out / swap_in when it preempts.
//
// Ownership: the device tier is a BlockPool + KvStorage of config.num_blocks blocks; the host
// tier (config.num_host_blocks > 0) another pair of the same geometry. Every block held by a
// sequence's table holds one reference in its tier's pool; fork shares blocks by adding
// references.
//
// Prefix caching (config.enable_prefix_caching): full blocks whose K/V is computed
// (MarkComputed) are published in a PrefixIndex under their chained prefix key (prefix_key.h:
// a keyed SipHash chain, namespaced, under a secret drawn per cache). AddSequence reuses the
// longest run of leading cached blocks instead of allocating them. A published block that no
// sequence holds stays cached and findable, and is evicted (per config.eviction_policy) only when
// a fresh block is needed and no free block remains. Each cached block holds one extra pool
// reference on behalf of the index. With config.enable_kv_events the index also logs CacheEvents
// naming blocks by their public SHA-256 chain hash (block_hash.h).
//
// Whole-prompt hits (config.max_prompt_logits > 0): StoreLogits keeps a computed prompt's
// last-token logits and a copy of its partly filled last block (PromptLogitsStore, which holds one
// pool reference on that copy); AddSequenceWithLogits of the same tokens in the same namespace,
// while the prompt's full blocks are still cached, reuses all of it and returns the logits, so
// the engine skips prefill. The copy is shared copy-on-write like any partly filled block; it is
// never in the prefix index (no events): it goes when its entry is dropped, least recently used
// first beyond max_prompt_logits, by ResetPrefixCache, or when a fresh block is needed and no
// free block is left: stored prompts whose copy no sequence holds are dropped then, least
// recently used first, before any cached block is evicted if their last full block is no longer
// cached (they cannot hit), after all evictable blocks otherwise. Such copies count as
// available.
//
// Storage tiers (docs/tiers.md): a cache built with a tier write queue (tier_queue_blocks > 0,
// prefix caching required) hashes every block with the public SHA-256 chain and offers each
// block it publishes to a BlockExportQueue, which pins it (one more pool reference) until the
// tier writer has copied its bytes out (TakeExports / FinishExports); a full queue skips the
// write (counted). ImportBlocks publishes K/V loaded from a tier for the blocks after the device
// hits (not offered back to the tiers), so that AddSequence finds them. The tier logic itself
// (codec, clients) lives outside the manager.
//
// Copy-on-write: appending into a partly filled last block that another table (or the prefix
// index: a prefix fork's tail may be a block the parent filled and published) also holds first
// copies that block (all layers, K and V) into a fresh block. Full shared blocks stay shared:
// nothing is ever written into them, except by the one exception of the scheduler contract
// (docs/scheduler_contract.md, rule 3: a prefix forked in the step whose parent chunk computes it).
//
// Invariants (CheckInvariants):
//   for every block b of a tier: pool.RefCount(b) == number of tables of that tier holding b
//                                                    + 1 if b is in the prefix index
//                                                    + 1 if b is a stored prompt's tail copy
//                                                    + 1 per tier write queue entry of b (pins)
//   b is evictable <=> b is in the prefix index, no table holds it and it is not pinned
//   a stored prompt's tail copy is not in the prefix index
//   the prefix index maps KeyOf(b) back to b for every cached b (PrefixIndex::CheckInvariants)
//   free + used == total in each pool (BlockPool::CheckInvariants)
//   every table covers exactly ceil(num_tokens / block_size) blocks; num_tokens >= 1
//   0 <= num_computed <= num_tokens
//
// Errors: all-or-nothing. OutOfBlocksError when a tier lacks blocks (nothing changes);
// UnknownSequence (KeyError) for a seq_id the cache does not hold; InvalidArgument for a seq_id
// that already exists, empty or negative tokens, bad ranges; InvalidStateError for an operation
// the sequence's state forbids (append / fork / metadata of a swapped-out sequence, swap_in of a
// resident one, a WriteKv slot in a block nobody holds; swap_out without a host tier is
// OutOfBlocksError). A call that fails to allocate memory (std::bad_alloc) also leaves the cache
// exactly as it was: each call allocates before its first change (tests/cpp/fault_injection
// sweeps every allocation of every call).
//
// Thread safety: thread-safe. One mutex over all metadata, held for O(work of the call); block
// copies for copy-on-write and swap happen under it. WriteKv takes no lock over the data (the
// scheduler guarantees no concurrent free of the blocks it writes), only the pool's, briefly, to
// check that the blocks are held. The probes (CachedPrefixLen, CanAllocate, NumComputed) are
// snapshots: another thread's call may change the answer before the caller acts on it. The pressure callback runs in the
// calling thread after the mutex is released; with concurrent callers notifications may arrive
// out of order (each carries the level at the time of its change).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ferrum_kv/batch_metadata.h"
#include "ferrum_kv/block_export.h"
#include "ferrum_kv/block_pool.h"
#include "ferrum_kv/cache_event.h"
#include "ferrum_kv/config.h"
#include "ferrum_kv/kv_storage.h"
#include "ferrum_kv/memory_pressure.h"
#include "ferrum_kv/prefix_index.h"
#include "ferrum_kv/prompt_logits.h"
#include "ferrum_kv/sequence.h"
#include "ferrum_kv/support/mutex.h"

namespace ferrum_kv {

struct CacheStats {
  int64_t num_blocks = 0;
  int64_t free_blocks = 0;
  int64_t used_blocks = 0;
  int64_t num_host_blocks = 0;
  int64_t free_host_blocks = 0;
  int64_t num_sequences = 0;
  int64_t num_swapped_sequences = 0;
  int64_t blocks_allocated = 0;      // device blocks handed to sequences (incl. copies)
  int64_t allocation_failures = 0;   // calls that raised OutOfBlocksError
  int64_t cow_copies = 0;            // blocks copied by copy-on-write
  int64_t swap_outs = 0;             // sequences swapped out
  int64_t swap_ins = 0;              // sequences swapped in
  int64_t blocks_swapped_out = 0;
  int64_t blocks_swapped_in = 0;
  int64_t bytes_used = 0;            // device bytes of used blocks
  int64_t bytes_total = 0;           // device arena bytes
  int64_t cached_blocks = 0;         // blocks in the prefix index (findable)
  int64_t evictable_blocks = 0;      // cached blocks no sequence holds (reclaimable)
  int64_t prefix_query_tokens = 0;   // prompt tokens looked up by AddSequence
  int64_t prefix_hit_tokens = 0;     // of which served from the prefix cache
  int64_t evictions = 0;             // cached blocks reclaimed for fresh allocations
  int64_t events_dropped = 0;        // events discarded: nobody drained them, or no memory
  int64_t prompt_logits = 0;         // prompts whose last-token logits are stored
  int64_t prompt_logits_hits = 0;    // AddSequenceWithLogits calls that reused a whole prompt
  int64_t tier_blocks_imported = 0;  // blocks ImportBlocks published from a tier
  int64_t tier_writes_queued = 0;    // published blocks queued for the tiers (pinned)
  int64_t tier_writes_skipped = 0;   // published blocks not queued: the tier write queue was full
  int64_t tier_write_queue = 0;      // blocks queued or being copied out now
};

// K/V of a prompt's full blocks loaded from a storage tier, for ImportBlocks.
struct BlockImport {
  int64_t first_block = 0;  // the index (in the prompt) of the block payloads[0] holds
  int64_t num_blocks = 0;
  // num_blocks pointers to bytes_per_block bytes each, in the storage layout of a block; they
  // must stay valid and unchanged during the call.
  const uint8_t* const* payloads = nullptr;
  // If set, copies payloads[i] into block (bytes_per_block) in place of a memcpy, under the
  // cache's lock, and returns whether the bytes it wrote are valid (checking the bytes copied,
  // not the source, which may change meanwhile); false stops the import before block i (neither
  // it nor those after it are published). Called for every block, concurrently from the
  // library's threads (parallel.h); must not throw.
  std::function<bool(int64_t i, uint8_t* block)> copy;
};

class PagedKvCache {
 public:
  using PressureCallback = std::function<void(PressureLevel)>;

  // Throws InvalidArgument on a bad config, OutOfMemory when an arena does not fit in the memory
  // available.
  explicit PagedKvCache(const CacheConfig& config);
  // With tier_queue_blocks > 0, a tier write queue of that capacity (see "Storage tiers"); it
  // needs config.enable_prefix_caching (InvalidArgument otherwise, as for a negative capacity).
  PagedKvCache(const CacheConfig& config, int64_t tier_queue_blocks);
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const CacheConfig& config() const { return config_; }
  const std::shared_ptr<KvStorage>& storage() const { return storage_; }
  // Null when config.num_host_blocks == 0.
  const std::shared_ptr<KvStorage>& host_storage() const { return host_storage_; }

  // Creates seq_id with tokens[0..n) (n >= 1) and gives it blocks for all of them. With prefix
  // caching, the longest run of leading full blocks cached under namespace_id is reused (its K/V
  // counts as computed) and the rest allocated. Returns the number of reused tokens: a multiple of
  // block_size, always < n (0 without prefix caching). priority: retention priority of the blocks
  // this sequence releases (priority_lru eviction). namespace_id is ignored without caching.
  int64_t AddSequence(SeqId seq_id, const int32_t* tokens, int64_t n,
                      const std::string& namespace_id = "", int32_t priority = 0)
      FKV_EXCLUDES(mu_);
  // AddSequence, except when tokens[0..n) were stored with StoreLogits under namespace_id and
  // their full blocks are still cached: then the sequence reuses every block (the partly filled
  // last one is the stored copy, shared), counts all n tokens as computed, returns n and sets
  // *logits to the stored logits. Otherwise it returns what AddSequence would and clears *logits.
  int64_t AddSequenceWithLogits(SeqId seq_id, const int32_t* tokens, int64_t n,
                                const std::string& namespace_id, int32_t priority,
                                std::vector<float>* logits) FKV_EXCLUDES(mu_);
  // Keeps logits[0..vocab_size) as what follows seq_id's tokens, for AddSequenceWithLogits; with
  // a copy of its partly filled last block (one fresh block; none if it ends at a block edge).
  // The same prompt again replaces its logits. Needs config.max_prompt_logits > 0 and every token
  // computed (MarkComputed(seq_id, NumTokens)): InvalidStateError otherwise, as for a swapped-out
  // sequence; OutOfBlocksError if no block is free or evictable for the copy (nothing changes).
  // May drop the least recently used stored prompt.
  void StoreLogits(SeqId seq_id, const float* logits, int64_t vocab_size) FKV_EXCLUDES(mu_);
  // Appends n >= 0 tokens, allocating blocks only when the last one fills.
  void AppendTokens(SeqId seq_id, const int32_t* tokens, int64_t n) FKV_EXCLUDES(mu_);
  // One decode step: tokens[i] is appended to seq_ids[i]; seq_ids must be distinct. One
  // all-or-nothing allocation for the whole batch. A decode token is sampled from the logits of
  // its sequence's last token, so the tokens before it count as computed (MarkComputed up to the
  // old length: with prefix caching, blocks they filled are published).
  void AppendBatch(const SeqId* seq_ids, const int32_t* tokens, int64_t n) FKV_EXCLUDES(mu_);
  // Whether a sequence of num_tokens tokens, none of them cached, would fit now (free or
  // evictable blocks). Throws InvalidArgument for num_tokens < 0.
  bool CanAllocate(int64_t num_tokens) const FKV_EXCLUDES(mu_);
  // Whether AddSequence(tokens[0..n), namespace_id) would succeed now: its prefix hits
  // (CachedPrefixLen) need no fresh block, and the evictable ones among them stop counting as
  // available. Changes nothing. Throws InvalidArgument for n < 1 or negative tokens.
  bool CanAllocate(const int32_t* tokens, int64_t n, const std::string& namespace_id = "") const
      FKV_EXCLUDES(mu_);
  // The number of leading tokens AddSequence(tokens[0..n), namespace_id) would reuse now (its
  // return value: a multiple of block_size, < n; 0 without prefix caching), changing nothing: no
  // statistics, no eviction order. Throws InvalidArgument for n < 1 or negative tokens.
  int64_t CachedPrefixLen(const int32_t* tokens, int64_t n,
                          const std::string& namespace_id = "") const FKV_EXCLUDES(mu_);
  // False for a swapped-out sequence; UnknownSequence for an unknown one.
  bool CanAppend(SeqId seq_id, int64_t num_tokens) const FKV_EXCLUDES(mu_);
  // Records that the K/V of the first num_tokens tokens is written (monotonic); with prefix
  // caching, publishes the full blocks among them.
  void MarkComputed(SeqId seq_id, int64_t num_tokens) FKV_EXCLUDES(mu_);
  // MarkComputed for seq_ids[i], num_tokens[i], i < n, in one call; validated as a whole first.
  void MarkComputedBatch(const SeqId* seq_ids, const int64_t* num_tokens, int64_t n)
      FKV_EXCLUDES(mu_);
  // child shares every block of the resident parent: same tokens, same computed count. Throws
  // UnknownSequence (parent), InvalidStateError (parent swapped out), InvalidArgument (child
  // exists). O(tokens).
  void Fork(SeqId parent, SeqId child) FKV_EXCLUDES(mu_);
  // child shares the blocks of parent's first num_tokens tokens (1 <= num_tokens <= parent's
  // tokens, else InvalidArgument; other errors as Fork): its tokens are those, its computed count
  // min(parent's, num_tokens). A partly filled last block is shared like any other and copied on
  // the child's (or the parent's) first append into it. O(tokens of the prefix).
  void Fork(SeqId parent, SeqId child, int64_t num_tokens) FKV_EXCLUDES(mu_);
  void FreeSequence(SeqId seq_id) FKV_EXCLUDES(mu_);
  // MarkComputed(seq_id, num_computed), then FreeSequence(seq_id), as one call: with prefix
  // caching the full blocks among the first num_computed tokens stay cached (a finished
  // request's last full block is published only so; decode steps mark all but the last token).
  // Throws UnknownSequence, or InvalidArgument unless 0 <= num_computed <= NumTokens (nothing
  // changes). A swapped-out sequence publishes nothing (its host blocks are freed).
  void FreeSequence(SeqId seq_id, int64_t num_computed) FKV_EXCLUDES(mu_);
  // Copies the sequence's blocks to the host tier and frees its device blocks, or back into
  // freshly allocated device blocks (the block table changes).
  void SwapOut(SeqId seq_id) FKV_EXCLUDES(mu_);
  void SwapIn(SeqId seq_id) FKV_EXCLUDES(mu_);

  bool Contains(SeqId seq_id) const FKV_EXCLUDES(mu_);
  bool IsSwapped(SeqId seq_id) const FKV_EXCLUDES(mu_);
  int64_t NumSequences() const FKV_EXCLUDES(mu_);
  int64_t NumTokens(SeqId seq_id) const FKV_EXCLUDES(mu_);
  // The leading tokens whose K/V is written (MarkComputed, prefix hits, decode steps):
  // 0 <= NumComputed <= NumTokens. Throws UnknownSequence.
  int64_t NumComputed(SeqId seq_id) const FKV_EXCLUDES(mu_);
  std::vector<int32_t> Tokens(SeqId seq_id) const FKV_EXCLUDES(mu_);
  std::vector<BlockId> BlockTable(SeqId seq_id) const FKV_EXCLUDES(mu_);
  // Slots of token positions [start, end), 0 <= start <= end <= num_tokens; resident only.
  std::vector<int32_t> SlotMapping(SeqId seq_id, int64_t start, int64_t end) const
      FKV_EXCLUDES(mu_);
  // Metadata for resident sequences seq_ids[0..n) (repeats allowed).
  BatchMetadata BuildBatchMetadata(const SeqId* seq_ids, int64_t n) const FKV_EXCLUDES(mu_);

  // Scatters n tokens' K/V into device slots (KvStorage::WriteTokens; slot -1 is skipped).
  // Throws InvalidStateError, before any write, for a slot in a block that no sequence, cached
  // block or stored prompt holds (ref count 0: a slot taken before FreeSequence or SwapOut that
  // would write into a block the next allocation hands out). It cannot tell a stale slot in a
  // block that is still held (for instance published, or already reallocated) from a live one.
  // Costs one pool lock and one ref-count read per run of slots in the same block.
  void WriteKv(int32_t layer, const int32_t* slots, int64_t n, const void* k, const void* v,
               DType src_dtype);
  // Copies the sequence's K and V of layer, in token order, in the storage dtype, from whichever
  // tier holds it. Returns num_tokens; k and v are resized to num_tokens * num_kv_heads *
  // head_dim * element size bytes.
  int64_t GatherKv(SeqId seq_id, int32_t layer, std::vector<uint8_t>* k,
                   std::vector<uint8_t>* v) const FKV_EXCLUDES(mu_);

  // Drops every cached block that no sequence holds, and every stored prompt's logits; blocks that
  // sequences hold stay with them but are no longer findable. Logs kAllCleared. No-op without
  // prefix caching.
  void ResetPrefixCache() FKV_EXCLUDES(mu_);
  // The events logged since the last call, oldest first (empty without config.enable_kv_events).
  std::vector<CacheEvent> DrainEvents() FKV_EXCLUDES(mu_);

  // K/V of full blocks of tokens[0..n) loaded from a storage tier: where the device lookup under
  // namespace_id stops at block h with import.first_block <= h < first_block + num_blocks, the
  // blocks h .. first_block + num_blocks - 1 (as many as free or evictable blocks allow, the
  // device hits kept) get fresh blocks holding their payloads (copied under the lock), published
  // in the prefix index as cached blocks no sequence holds (evictable; not offered to the tier
  // write queue); an AddSequence of the tokens then finds them as hits. Returns how many were
  // published (0 without prefix caching, or when the import does not continue the device hits).
  // Throws InvalidArgument for a bad prompt or import (blocks past the full blocks of tokens);
  // nothing changes then.
  int64_t ImportBlocks(const int32_t* tokens, int64_t n, const std::string& namespace_id,
                       const BlockImport& import) FKV_EXCLUDES(mu_);
  // The tier writer's side of the tier write queue (0 / no-op without one): moves up to max of
  // the oldest queued blocks in flight, their ids to blocks[] and public chain hashes to
  // hashes[]; the caller copies their bytes (storage()->BlockData) out and must then call
  // FinishExports on them, which unpins them (a cached block held by nothing else becomes
  // evictable).
  int64_t TakeExports(int64_t max, BlockId* blocks, BlockHash* hashes) FKV_EXCLUDES(mu_);
  void FinishExports(const BlockId* blocks, int64_t n) FKV_EXCLUDES(mu_);

  CacheStats Stats() const FKV_EXCLUDES(mu_);
  // From the fraction of device blocks that are free or evictable.
  PressureLevel MemoryPressure() const FKV_EXCLUDES(mu_);
  // Called with the new level whenever a call changes it. Pass nullptr to remove.
  void SetPressureCallback(PressureCallback callback) FKV_EXCLUDES(mu_);

  // Throws InvariantError if an invariant above does not hold.
  void CheckInvariants() const FKV_EXCLUDES(mu_);

 private:
  // AddSequence (logits == nullptr) or AddSequenceWithLogits.
  int64_t Add(SeqId seq_id, const int32_t* tokens, int64_t n, const std::string& namespace_id,
              int32_t priority, std::vector<float>* logits) FKV_EXCLUDES(mu_);
  Sequence& Find(SeqId seq_id) FKV_REQUIRES(mu_);
  const Sequence& Find(SeqId seq_id) const FKV_REQUIRES(mu_);
  Sequence& FindResident(SeqId seq_id, const char* operation) FKV_REQUIRES(mu_);
  // Both Forks: the first num_tokens tokens (all of them when empty).
  void ForkFirst(SeqId parent, SeqId child, std::optional<int64_t> num_tokens) FKV_EXCLUDES(mu_);
  // FreeSequence's work: releases seq_id's blocks and forgets it. Throws UnknownSequence.
  void Release(SeqId seq_id) FKV_REQUIRES(mu_);
  // Checks tokens[0..n) for AddSequence and friends: n >= 1, no negative id.
  static void CheckPrompt(const int32_t* tokens, int64_t n);
  // The prefix lookup of AddSequence: the blocks cached under the chain from root over the first
  // max_hit full blocks of tokens, as far as they run unbroken, appended to *hits; their keys in
  // keys[0..] (resized as needed). Returns how many were found.
  int64_t FindCachedBlocks(const PrefixKey& root, const int32_t* tokens, int64_t max_hit,
                           std::vector<PrefixKey>* keys, std::vector<BlockId>* hits) const
      FKV_REQUIRES(mu_);
  // The blocks AddSequence(tokens[0..n)) without stored logits would reuse (none without prefix
  // caching).
  std::vector<BlockId> PromptHits(const int32_t* tokens, int64_t n,
                                  const std::string& namespace_id) const FKV_REQUIRES(mu_);
  // How many of blocks are evictable (cached, held by no table).
  int64_t CountEvictable(const std::vector<BlockId>& blocks) const FKV_REQUIRES(mu_);
  // What appending n tokens takes: whether the partly filled last block must be copied first
  // (copy-on-write: more than one table holds it) and how many fresh blocks in all.
  struct AppendPlan {
    bool copy_tail;
    int64_t blocks;
  };
  // Whether seq's last block is full.
  bool TailIsFull(const Sequence& seq) const FKV_REQUIRES(mu_);
  // Ref count of seq's last block if it is partly filled, else 0.
  int32_t TailRefCount(const Sequence& seq) const FKV_REQUIRES(mu_);
  // tail_holders: tables that will still hold the partly filled last block when seq appends.
  AppendPlan PlanAppend(const Sequence& seq, int64_t n, int32_t tail_holders) const
      FKV_REQUIRES(mu_);
  // Within one AppendBatch: how many earlier batch members hold seq's shared, partly filled last
  // block (and will have copied it by the time seq appends). Records seq as one more.
  int32_t CountEarlierTailCopies(const Sequence& seq, int32_t tail_holders) FKV_REQUIRES(mu_);
  // Appends tokens to a resident sequence as planned, taking blocks from fresh[*next...].
  void AppendWithBlocks(Sequence& seq, const int32_t* tokens, int64_t n, bool copy_tail,
                        const BlockId* fresh, int64_t* next) FKV_REQUIRES(mu_);
  PressureLevel PressureLocked() const FKV_REQUIRES(mu_);
  // Counts the failure and throws OutOfBlocksError.
  [[noreturn]] void ThrowOutOfBlocks(int64_t needed, int64_t available);
  // Free blocks plus cached blocks that eviction could reclaim plus stored prompts' copies that
  // only the store holds (ReclaimableCopies).
  int64_t AvailableBlocks() const FKV_REQUIRES(mu_);
  int64_t ReclaimableCopies() const FKV_REQUIRES(mu_);
  // Makes room for AllocateDevice(n) (its scratch), so that once n <= AvailableBlocks() is known
  // it cannot fail: for calls that change something before they allocate.
  void PrepareAllocation(int64_t n) FKV_REQUIRES(mu_);
  // Allocates n device blocks into scratch_; when the free list is short, drops stored prompts
  // that cannot hit any more, evicts cached blocks, then drops other stored prompts (with
  // unshared copies). Throws OutOfBlocksError (counted, nothing evicted) when
  // n > AvailableBlocks().
  void AllocateDevice(int64_t n) FKV_REQUIRES(mu_);
  // Drops one table reference from each block (a whole device table, in order); cached blocks
  // left with only the index's reference become evictable, last block first.
  void ReleaseDeviceBlocks(const std::vector<BlockId>& blocks, int32_t priority)
      FKV_REQUIRES(mu_);
  // With prefix caching: a cached block whose ref_count (after a release) is the index's alone
  // becomes evictable with priority. Allocates nothing.
  void MakeEvictableIfUnheld(BlockId block, int32_t ref_count, int32_t priority)
      FKV_REQUIRES(mu_);
  // Finds seq_id and checks 0 <= num_tokens <= its token count (for MarkComputed).
  Sequence& CheckComputedCount(SeqId seq_id, int64_t num_tokens) FKV_REQUIRES(mu_);
  // MarkComputed under the lock (also the first half of FreeSequence(seq_id, num_computed)):
  // checks, reserves the publication, then changes state.
  void MarkComputedLocked(SeqId seq_id, int64_t num_tokens) FKV_REQUIRES(mu_);
  // Raises seq.num_computed to num_tokens; with prefix caching, queues the computed full blocks
  // of a resident seq that were not yet offered to the index (QueuePublication).
  void ApplyComputed(Sequence& seq, int64_t num_tokens) FKV_REQUIRES(mu_);
  // Queues seq's computed full blocks not yet offered to the index, if any, for PublishPending
  // (their block ids, chain parent and tokens are noted now, while seq is in cache) and counts
  // them offered. seq's tokens must not change before KeyPending. Preconditions: resident; not
  // queued since the last KeyPending (its chain key would be stale).
  void QueuePublication(Sequence& seq) FKV_REQUIRES(mu_);
  // Makes room in the publication queue for `jobs` sequences with `blocks` blocks in all, so that
  // queueing, keying and inserting them cannot fail: before the call changes anything.
  void ReservePublication(int64_t jobs, int64_t blocks) FKV_REQUIRES(mu_);
  // Offers the queued blocks to the prefix index in one batch and empties the queue:
  // KeyPending, then InsertPending.
  void PublishPending() FKV_REQUIRES(mu_);
  // Computes the queued blocks' keys (their chains side by side), prefetches what inserting them
  // reads and advances their sequences' chain keys (QueuePublication advanced the chain
  // hashes); the queued sequences' tokens may change afterwards.
  void KeyPending() FKV_REQUIRES(mu_);
  // Inserts the keyed blocks into the index, one IncRef for those it took, and empties the
  // queue. Precondition: their sequences still hold them (KeyPending did not return them).
  void InsertPending() FKV_REQUIRES(mu_);
  // Empties the publication queue when a call that fills it ends, however it ends.
  struct QueueGuard;
  // Throws InvariantError unless seq's chain_key (and chain_hash) are those of its tokens.
  void CheckChains(SeqId seq_id, const Sequence& seq) const FKV_REQUIRES(mu_);
  // Runs body under the mutex, then, if the call changed the memory pressure level, the pressure
  // callback with the mutex released.
  template <typename Body>
  void Mutate(Body&& body) FKV_EXCLUDES(mu_);

  const CacheConfig config_;
  std::shared_ptr<KvStorage> storage_;
  std::shared_ptr<KvStorage> host_storage_;
  BlockPool pool_;
  std::unique_ptr<BlockPool> host_pool_;

  mutable Mutex mu_;
  std::unordered_map<SeqId, Sequence> sequences_ FKV_GUARDED_BY(mu_);
  std::vector<BlockId> scratch_ FKV_GUARDED_BY(mu_);
  struct BatchEntry {
    Sequence* seq;
    bool copy_tail;
  };
  std::vector<BatchEntry> batch_scratch_ FKV_GUARDED_BY(mu_);
  std::vector<std::pair<BlockId, int32_t>> shared_tails_ FKV_GUARDED_BY(mu_);
  // The blocks one call evicts or publishes.
  std::vector<BlockId> block_scratch_ FKV_GUARDED_BY(mu_);
  std::vector<BlockId> tail_scratch_ FKV_GUARDED_BY(mu_);       // AppendBatch: last blocks
  // AppendBatch, prefix caching: the sequences with full blocks, not yet published, that the
  // step marks computed.
  std::vector<Sequence*> publishers_ FKV_GUARDED_BY(mu_);
  std::vector<int32_t> ref_count_scratch_ FKV_GUARDED_BY(mu_);  // their ref counts; release
  // The publication queue: per sequence (publishing_[j]), the job that keys its blocks
  // (key_jobs_[j], out set by KeyPending); all the blocks (and their hashes, with events) in
  // queue order in publish_blocks_ (hash_scratch_), their keys, once computed, in key_scratch_.
  std::vector<KeyChainJob> key_jobs_ FKV_GUARDED_BY(mu_);
  std::vector<Sequence*> publishing_ FKV_GUARDED_BY(mu_);
  std::vector<BlockId> publish_blocks_ FKV_GUARDED_BY(mu_);
  std::vector<BlockHash> hash_scratch_ FKV_GUARDED_BY(mu_);
  std::vector<PrefixKey> key_scratch_ FKV_GUARDED_BY(mu_);  // keys of a lookup or a publication
  uint64_t batch_stamp_ FKV_GUARDED_BY(mu_) = 0;
  int64_t num_swapped_ FKV_GUARDED_BY(mu_) = 0;
  PressureLevel last_pressure_ FKV_GUARDED_BY(mu_) = PressureLevel::kLow;
  std::shared_ptr<const PressureCallback> pressure_callback_ FKV_GUARDED_BY(mu_);

  // Null without a tier write queue.
  std::unique_ptr<BlockExportQueue> export_ FKV_PT_GUARDED_BY(mu_);
  int64_t tier_blocks_imported_ FKV_GUARDED_BY(mu_) = 0;
  // Sequences keep public chain hashes: with KV events or a tier write queue.
  const bool hash_blocks_;

  const PrefixKeyer keyer_;  // immutable: used outside the mutex
  std::unique_ptr<PrefixIndex> prefix_ FKV_PT_GUARDED_BY(mu_);  // null without prefix caching
  // Null unless config.max_prompt_logits > 0.
  std::unique_ptr<PromptLogitsStore> prompt_logits_ FKV_PT_GUARDED_BY(mu_);
  int64_t prompt_logits_hits_ FKV_GUARDED_BY(mu_) = 0;
  // ReclaimableCopies: the stored copies and their ref counts (max_prompt_logits entries each,
  // from construction: it runs after calls changed the cache and must not fail).
  mutable std::vector<BlockId> copies_scratch_ FKV_GUARDED_BY(mu_);
  mutable std::vector<int32_t> copy_refs_scratch_ FKV_GUARDED_BY(mu_);
  int64_t prefix_query_tokens_ FKV_GUARDED_BY(mu_) = 0;
  int64_t prefix_hit_tokens_ FKV_GUARDED_BY(mu_) = 0;
  int64_t evictions_ FKV_GUARDED_BY(mu_) = 0;

  std::atomic<int64_t> blocks_allocated_{0};
  std::atomic<int64_t> allocation_failures_{0};
  std::atomic<int64_t> cow_copies_{0};
  std::atomic<int64_t> swap_outs_{0};
  std::atomic<int64_t> swap_ins_{0};
  std::atomic<int64_t> blocks_swapped_out_{0};
  std::atomic<int64_t> blocks_swapped_in_{0};
};

}  // namespace ferrum_kv
