#include "ferrum_kv/cache_manager.h"

#include <algorithm>
#include <cassert>
#include <cstring>

#include "ferrum_kv/parallel.h"
#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

namespace {

std::shared_ptr<KvStorage> MaybeStorage(const CacheConfig& config, int64_t num_blocks) {
  return num_blocks > 0 ? std::make_shared<KvStorage>(config, num_blocks) : nullptr;
}

// Makes room for `extra` more elements (growing geometrically), so that appending them cannot
// throw: calls reserve before they change anything.
template <typename T>
void ReserveFor(std::vector<T>& v, size_t extra) {
  if (v.capacity() - v.size() < extra) v.reserve(std::max(v.size() + extra, 2 * v.capacity()));
}

// Runs a cleanup when the scope ends, however it ends.
template <typename Cleanup>
class OnExit {
 public:
  explicit OnExit(Cleanup cleanup) : cleanup_(std::move(cleanup)) {}
  OnExit(const OnExit&) = delete;
  OnExit& operator=(const OnExit&) = delete;
  ~OnExit() { cleanup_(); }

 private:
  Cleanup cleanup_;
};
}  // namespace

PagedKvCache::PagedKvCache(const CacheConfig& config) : PagedKvCache(config, 0) {}

PagedKvCache::PagedKvCache(const CacheConfig& config, int64_t tier_queue_blocks)
    : config_((config.Validate(), config)),
      storage_(std::make_shared<KvStorage>(config_)),
      host_storage_(MaybeStorage(config_, config_.num_host_blocks)),
      pool_(config_.num_blocks),
      host_pool_(config_.num_host_blocks > 0 ? std::make_unique<BlockPool>(config_.num_host_blocks)
                                             : nullptr),
      hash_blocks_(config_.enable_kv_events || tier_queue_blocks > 0) {
  FKV_CHECK_ARG(tier_queue_blocks >= 0,
                "tier_queue_blocks must be >= 0, got " << tier_queue_blocks);
  FKV_CHECK_ARG(tier_queue_blocks == 0 || config_.enable_prefix_caching,
                "storage tiers need CacheConfig(enable_prefix_caching=True)");
  MutexLock lock(&mu_);
  if (tier_queue_blocks > 0) export_ = std::make_unique<BlockExportQueue>(tier_queue_blocks);
  if (config_.enable_prefix_caching) {
    prefix_ = std::make_unique<PrefixIndex>(config_.num_blocks, config_.eviction_policy,
                                            config_.enable_kv_events);
  }
  if (config_.max_prompt_logits > 0) {
    prompt_logits_ = std::make_unique<PromptLogitsStore>(config_.max_prompt_logits);
    copies_scratch_.resize(size_t(config_.max_prompt_logits));
    copy_refs_scratch_.resize(size_t(config_.max_prompt_logits));
  }
  last_pressure_ = PressureLocked();
}

template <typename Body>
void PagedKvCache::Mutate(Body&& body) {
  std::shared_ptr<const PressureCallback> callback;
  PressureLevel level;
  {
    MutexLock lock(&mu_);
    body();
    level = PressureLocked();
    if (level != last_pressure_) {
      last_pressure_ = level;
      callback = pressure_callback_;
    }
  }
  if (callback) (*callback)(level);
}

Sequence& PagedKvCache::Find(SeqId seq_id) {
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) FKV_THROW(UnknownSequence, "unknown sequence " << seq_id);
  return it->second;
}

const Sequence& PagedKvCache::Find(SeqId seq_id) const {
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) FKV_THROW(UnknownSequence, "unknown sequence " << seq_id);
  return it->second;
}

Sequence& PagedKvCache::FindResident(SeqId seq_id, const char* operation) {
  Sequence& seq = Find(seq_id);
  if (seq.swapped) {
    FKV_THROW(InvalidStateError, "cannot " << operation << " sequence " << seq_id
                                           << ": it is swapped out (swap_in first)");
  }
  return seq;
}

int64_t PagedKvCache::AvailableBlocks() const {
  return pool_.num_free_blocks() + (prefix_ ? prefix_->evictable().size() : 0) +
         ReclaimableCopies();
}

int64_t PagedKvCache::ReclaimableCopies() const {
  if (!prompt_logits_) return 0;
  const int64_t k = prompt_logits_->TailBlocks(copies_scratch_.data());
  pool_.RefCounts(copies_scratch_.data(), k, copy_refs_scratch_.data());
  return std::count(copy_refs_scratch_.begin(), copy_refs_scratch_.begin() + k, 1);  // the store's
}

void PagedKvCache::ThrowOutOfBlocks(int64_t needed, int64_t available) {
  allocation_failures_.fetch_add(1, std::memory_order_relaxed);
  FKV_THROW(OutOfBlocksError, "cannot allocate " << needed << " blocks: only " << available
                                                 << " of " << pool_.num_blocks()
                                                 << " are free or evictable");
}

void PagedKvCache::PrepareAllocation(int64_t n) {
  if (int64_t(scratch_.size()) < n) scratch_.resize(size_t(n));
  block_scratch_.reserve(size_t(n));  // the evicted blocks
}

void PagedKvCache::AllocateDevice(int64_t n) {
  if (n > AvailableBlocks()) ThrowOutOfBlocks(n, AvailableBlocks());
  PrepareAllocation(n);  // the last step that may fail
  int64_t missing = n - pool_.num_free_blocks();
  const auto unshared = [this](const PromptLogits& entry) FKV_NO_THREAD_SAFETY_ANALYSIS {
    return pool_.RefCount(entry.tail_block) == 1;
  };
  // First the copies of stored prompts that cannot hit any more (their last full block was
  // evicted), then cached blocks in eviction order, then the other stored prompts' copies.
  for (; missing > 0 && prompt_logits_; --missing) {
    const BlockId copy = prompt_logits_->DropOldestWithTail(
        [&](const PromptLogits& entry) FKV_NO_THREAD_SAFETY_ANALYSIS {
          return entry.has_full_blocks && unshared(entry) &&
                 prefix_->Find(entry.parent) == kNullBlock;
        });
    if (copy == kNullBlock) break;
    pool_.Free(&copy, 1);
  }
  if (missing > 0 && prefix_) {
    const int64_t evicted = std::min(missing, prefix_->evictable().size());
    block_scratch_.clear();
    for (int64_t i = 0; i < evicted; ++i) {
      block_scratch_.push_back(prefix_->evictable().PopVictim());
      prefix_->Erase(block_scratch_.back());
    }
    pool_.Free(block_scratch_.data(), evicted);  // the index's references were the last ones
    evictions_ += evicted;
    missing -= evicted;
  }
  for (; missing > 0; --missing) {
    const BlockId copy = prompt_logits_->DropOldestWithTail(unshared);
    FKV_CHECK_INVARIANT(copy != kNullBlock, "AvailableBlocks counted a copy that is not there");
    pool_.Free(&copy, 1);
  }
  pool_.Allocate(n, scratch_.data());
  blocks_allocated_.fetch_add(n, std::memory_order_relaxed);
}

void PagedKvCache::ReleaseDeviceBlocks(const std::vector<BlockId>& blocks, int32_t priority) {
  const int64_t n = int64_t(blocks.size());
  if (prefix_) ref_count_scratch_.resize(size_t(n));  // may allocate: before anything changes
  pool_.Free(blocks.data(), n);
  if (!prefix_) return;
  // A cached block left with the index's reference only becomes evictable (it was not: the
  // released table held it); last block first: the end of a prompt is evicted before its
  // beginning.
  pool_.RefCounts(blocks.data(), n, ref_count_scratch_.data());
  for (int64_t i = n - 1; i >= 0; --i) {
    MakeEvictableIfUnheld(blocks[size_t(i)], ref_count_scratch_[size_t(i)], priority);
  }
}

void PagedKvCache::MakeEvictableIfUnheld(BlockId block, int32_t ref_count, int32_t priority) {
  if (ref_count == 1 && prefix_->IsCached(block)) {
    prefix_->evictable().Add(block, priority, prefix_->PublishOrder(block));
  }
}

// Clears the publication queue when the enclosing call ends. It is empty then after success
// already; after an exception between queueing and inserting (a bad_alloc) stale entries would
// otherwise pair the next publication's keys with the wrong blocks.
struct PagedKvCache::QueueGuard {
  PagedKvCache* cache;
  ~QueueGuard() FKV_NO_THREAD_SAFETY_ANALYSIS {
    cache->key_jobs_.clear();
    cache->publishing_.clear();
    cache->publish_blocks_.clear();
    cache->hash_scratch_.clear();
  }
};

void PagedKvCache::QueuePublication(Sequence& seq) {
  const int32_t block_size = config_.block_size;
  const int64_t first = seq.blocks_published;
  int64_t end = first;  // num_computed / block_size, without a division (usually one step)
  while ((end + 1) * block_size <= seq.num_computed) ++end;
  if (end == first) return;
  const int32_t* tokens = seq.tokens.data() + first * block_size;
  key_jobs_.push_back(KeyChainJob{seq.chain_key, tokens, end - first, nullptr});
  publishing_.push_back(&seq);
  const int64_t offset = int64_t(publish_blocks_.size());
  for (int64_t b = first; b < end; ++b) publish_blocks_.push_back(seq.blocks[size_t(b)]);
  // KeyPending reads the tokens: the first block's lines load meanwhile (the hardware prefetcher
  // follows the rest).
  __builtin_prefetch(tokens);
  __builtin_prefetch(tokens + block_size - 1);
  if (hash_blocks_) {
    hash_scratch_.resize(size_t(offset + end - first));
    HashBlocks(seq.chain_hash, tokens, end - first, block_size, hash_scratch_.data() + offset);
    seq.chain_hash = hash_scratch_.back();
  }
  seq.blocks_published = end;
}

void PagedKvCache::KeyPending() {
  // The chains of different sequences are independent: ChainMany runs them side by side.
  const int64_t total = int64_t(publish_blocks_.size());
  if (int64_t(key_scratch_.size()) < total) key_scratch_.resize(size_t(total));
  PrefixKey* out = key_scratch_.data();
  for (KeyChainJob& job : key_jobs_) {
    job.out = out;
    out += job.num_blocks;
  }
  keyer_.ChainMany(key_jobs_.data(), int64_t(key_jobs_.size()), config_.block_size);
  const BlockId* block = publish_blocks_.data();
  for (size_t j = 0; j < key_jobs_.size(); ++j) {
    const KeyChainJob& job = key_jobs_[j];
    for (int64_t b = 0; b < job.num_blocks; ++b) prefix_->PrefetchInsertion(job.out[b], *block++);
    publishing_[j]->chain_key = job.out[job.num_blocks - 1];
  }
  key_jobs_.clear();
  publishing_.clear();
}

void PagedKvCache::InsertPending() {
  // Blocks already cached (reused or published through a sibling) and content another block
  // already holds (two identical prompts computed side by side) are skipped.
  block_scratch_.clear();  // the blocks this call publishes
  prefix_->InsertBatch(key_scratch_.data(), publish_blocks_.data(),
                       prefix_->logs_events() ? hash_scratch_.data() : nullptr,
                       int64_t(publish_blocks_.size()), &block_scratch_);
  pool_.IncRef(block_scratch_.data(), int64_t(block_scratch_.size()));  // the index's references
  if (export_) {
    // The inserted blocks are a subsequence of the queued ones, in order: their hashes are found
    // walking both.
    size_t q = 0;
    for (const BlockId block : block_scratch_) {
      while (publish_blocks_[q] != block) ++q;
      if (export_->Offer(block, hash_scratch_[q])) pool_.IncRef(&block, 1);  // the pin
    }
  }
  publish_blocks_.clear();
  hash_scratch_.clear();
}

void PagedKvCache::ReservePublication(int64_t jobs, int64_t blocks) {
  key_jobs_.reserve(size_t(jobs));
  publishing_.reserve(size_t(jobs));
  publish_blocks_.reserve(size_t(blocks));
  if (int64_t(key_scratch_.size()) < blocks) key_scratch_.resize(size_t(blocks));
  if (hash_blocks_) hash_scratch_.reserve(size_t(blocks));
  block_scratch_.reserve(size_t(blocks));  // the inserted ones
}

void PagedKvCache::PublishPending() {
  KeyPending();
  InsertPending();
}

bool PagedKvCache::TailIsFull(const Sequence& seq) const {
  return seq.tokens.size() % config_.block_size == 0;
}

int32_t PagedKvCache::TailRefCount(const Sequence& seq) const {
  return TailIsFull(seq) ? 0 : pool_.RefCount(seq.blocks.back());
}

PagedKvCache::AppendPlan PagedKvCache::PlanAppend(const Sequence& seq, int64_t n,
                                                  int32_t tail_holders) const {
  if (n == 0) return AppendPlan{false, 0};
  const int64_t new_blocks = BlocksForTokens(int64_t(seq.tokens.size()) + n, config_.block_size) -
                             int64_t(seq.blocks.size());
  const bool copy_tail = tail_holders > 1;
  return AppendPlan{copy_tail, new_blocks + (copy_tail ? 1 : 0)};
}

void PagedKvCache::AppendWithBlocks(Sequence& seq, const int32_t* tokens, int64_t n,
                                    bool copy_tail, const BlockId* fresh, int64_t* next) {
  if (n == 0) return;
  if (copy_tail) {
    const BlockId shared = seq.blocks.back();
    const BlockId copy = fresh[(*next)++];
    storage_->CopyBlock(shared, copy);
    pool_.Free(&shared, 1);
    // A prefix fork's tail may be a full block of the parent's, cached (and the parent gone).
    if (prefix_) MakeEvictableIfUnheld(shared, pool_.RefCount(shared), seq.priority);
    seq.blocks.back() = copy;
    cow_copies_.fetch_add(1, std::memory_order_relaxed);
  }
  const int64_t new_blocks =
      BlocksForTokens(int64_t(seq.tokens.size()) + n, config_.block_size) -
      int64_t(seq.blocks.size());
  for (int64_t i = 0; i < new_blocks; ++i) seq.blocks.push_back(fresh[(*next)++]);
  seq.tokens.insert(seq.tokens.end(), tokens, tokens + n);
}

int64_t PagedKvCache::AddSequence(SeqId seq_id, const int32_t* tokens, int64_t n,
                                  const std::string& namespace_id, int32_t priority) {
  return Add(seq_id, tokens, n, namespace_id, priority, nullptr);
}

int64_t PagedKvCache::AddSequenceWithLogits(SeqId seq_id, const int32_t* tokens, int64_t n,
                                            const std::string& namespace_id, int32_t priority,
                                            std::vector<float>* logits) {
  FKV_CHECK_ARG(logits != nullptr, "logits must not be null");
  logits->clear();
  return Add(seq_id, tokens, n, namespace_id, priority, logits);
}

void PagedKvCache::CheckPrompt(const int32_t* tokens, int64_t n) {
  FKV_CHECK_ARG(n >= 1, "a sequence needs at least one token, got " << n);
  CheckTokenIds(tokens, 0, n);
}

int64_t PagedKvCache::FindCachedBlocks(const PrefixKey& root, const int32_t* tokens,
                                       int64_t max_hit, std::vector<PrefixKey>* keys,
                                       std::vector<BlockId>* hits) const {
  const int32_t block_size = config_.block_size;
  int64_t hit_blocks = 0;
  int64_t keyed = 0;  // keys computed so far, in *keys
  int64_t chunk = 1;
  while (hit_blocks < max_hit) {
    // Keys only about as far as the hits go (the rest are computed when published, in
    // batches): in chunks of 1, 2, 4, ... 64 blocks, each chunk's probes prefetched together.
    if (hit_blocks == keyed) {
      const int64_t end = std::min(max_hit, keyed + chunk);
      if (int64_t(keys->size()) < end) keys->resize(size_t(end));
      keyer_.Chain(keyed == 0 ? root : (*keys)[keyed - 1], tokens + keyed * block_size,
                   end - keyed, block_size, keys->data() + keyed);
      for (int64_t i = keyed; i < end; ++i) prefix_->Prefetch((*keys)[i]);
      keyed = end;
      chunk = std::min<int64_t>(2 * chunk, 64);
    }
    const BlockId block = prefix_->Find((*keys)[hit_blocks]);
    if (block == kNullBlock) break;
    hits->push_back(block);
    ++hit_blocks;
  }
  return hit_blocks;
}

std::vector<BlockId> PagedKvCache::PromptHits(const int32_t* tokens, int64_t n,
                                              const std::string& namespace_id) const {
  std::vector<BlockId> hits;
  if (!prefix_) return hits;
  std::vector<PrefixKey> keys;
  // As Add without stored logits: the last token is always computed.
  FindCachedBlocks(keyer_.Root(namespace_id), tokens, (n - 1) / config_.block_size, &keys,
                   &hits);
  return hits;
}

int64_t PagedKvCache::CountEvictable(const std::vector<BlockId>& blocks) const {
  return std::count_if(blocks.begin(), blocks.end(), [this](BlockId block)
                           FKV_NO_THREAD_SAFETY_ANALYSIS {
                             return prefix_->evictable().Contains(block);
                           });
}

int64_t PagedKvCache::CachedPrefixLen(const int32_t* tokens, int64_t n,
                                      const std::string& namespace_id) const {
  CheckPrompt(tokens, n);
  MutexLock lock(&mu_);
  return int64_t(PromptHits(tokens, n, namespace_id).size()) * config_.block_size;
}

bool PagedKvCache::CanAllocate(const int32_t* tokens, int64_t n,
                               const std::string& namespace_id) const {
  CheckPrompt(tokens, n);
  MutexLock lock(&mu_);
  const std::vector<BlockId> hits = PromptHits(tokens, n, namespace_id);
  // Add's test: taking the hits makes the evictable ones unavailable.
  const int64_t needed = BlocksForTokens(n, config_.block_size) - int64_t(hits.size());
  return needed <= AvailableBlocks() - (prefix_ ? CountEvictable(hits) : 0);
}

int64_t PagedKvCache::Add(SeqId seq_id, const int32_t* tokens, int64_t n,
                          const std::string& namespace_id, int32_t priority,
                          std::vector<float>* logits) {
  CheckPrompt(tokens, n);
  const int32_t block_size = config_.block_size;
  Sequence seq;
  seq.tokens.assign(tokens, tokens + n);
  seq.blocks.reserve(size_t(BlocksForTokens(n, block_size)));  // filled without allocating
  seq.priority = priority;
  if (config_.enable_prefix_caching) {
    seq.root_key = keyer_.Root(namespace_id);
    if (hash_blocks_) {
      seq.root_hash = RootHash(reinterpret_cast<const uint8_t*>(namespace_id.data()),
                               namespace_id.size());
    }
  }
  int64_t reused = 0;  // tokens whose K/V the sequence gets from the cache
  Mutate([&]() FKV_REQUIRES(mu_) {
    FKV_CHECK_ARG(sequences_.count(seq_id) == 0, "sequence " << seq_id << " already exists");
    // The map's node first: once blocks are taken nothing may fail (strong guarantee).
    const auto slot = sequences_.try_emplace(seq_id).first;
    bool filled = false;
    const OnExit erase_unless_filled([&]() FKV_NO_THREAD_SAFETY_ANALYSIS {
      if (!filled) sequences_.erase(slot);
    });
    if (prefix_) {
      // The engine computes at least the last token (it needs its logits), unless they are
      // stored: a whole-prompt hit may take every full block.
      const bool whole_possible = logits != nullptr && prompt_logits_ != nullptr;
      const int64_t max_hit = whole_possible ? n / block_size : (n - 1) / block_size;
      int64_t hit_blocks =
          FindCachedBlocks(seq.root_key, tokens, max_hit, &key_scratch_, &seq.blocks);
      int64_t evictable_hits = CountEvictable(seq.blocks);
      const PromptLogits* whole = nullptr;
      if (whole_possible && hit_blocks == n / block_size) {
        whole = prompt_logits_->Find(hit_blocks > 0 ? key_scratch_[hit_blocks - 1] : seq.root_key,
                                     tokens + hit_blocks * block_size, n - hit_blocks * block_size);
      }
      if (whole == nullptr && hit_blocks > (n - 1) / block_size) {
        // No stored logits for a prompt that ends at a block edge: its last block is computed.
        evictable_hits -= prefix_->evictable().Contains(seq.blocks.back());
        seq.blocks.pop_back();
        --hit_blocks;
      }
      seq.chain_hash = seq.root_hash;
      if (hash_blocks_ && hit_blocks > 0) {
        if (int64_t(hash_scratch_.size()) < hit_blocks) hash_scratch_.resize(size_t(hit_blocks));
        HashBlocks(seq.root_hash, tokens, hit_blocks, block_size, hash_scratch_.data());
        seq.chain_hash = hash_scratch_[hit_blocks - 1];
      }
      if (whole != nullptr) *logits = whole->logits;
      const BlockId tail_copy = whole != nullptr ? whole->tail_block : kNullBlock;
      const int64_t needed =
          BlocksForTokens(n, block_size) - hit_blocks - (tail_copy != kNullBlock ? 1 : 0);
      // Taking the hits makes them unevictable: check before changing anything.
      if (needed > AvailableBlocks() - evictable_hits) {
        ThrowOutOfBlocks(needed, AvailableBlocks() - evictable_hits);
      }
      PrepareAllocation(needed);
      for (BlockId block : seq.blocks) {
        if (prefix_->evictable().Contains(block)) prefix_->evictable().Remove(block);
      }
      pool_.IncRef(seq.blocks.data(), hit_blocks);
      AllocateDevice(needed);
      seq.blocks.insert(seq.blocks.end(), scratch_.begin(), scratch_.begin() + needed);
      if (tail_copy != kNullBlock) {
        pool_.IncRef(&tail_copy, 1);
        seq.blocks.push_back(tail_copy);
      }
      reused = whole != nullptr ? n : hit_blocks * block_size;
      prompt_logits_hits_ += whole != nullptr;
      seq.num_computed = reused;
      seq.blocks_published = hit_blocks;
      seq.chain_key = hit_blocks > 0 ? key_scratch_[hit_blocks - 1] : seq.root_key;
      prefix_query_tokens_ += n;
      prefix_hit_tokens_ += reused;
    } else {
      const int64_t needed = BlocksForTokens(n, block_size);
      AllocateDevice(needed);
      seq.blocks.assign(scratch_.begin(), scratch_.begin() + needed);
    }
    slot->second = std::move(seq);
    filled = true;
  });
  return reused;
}

void PagedKvCache::StoreLogits(SeqId seq_id, const float* logits, int64_t vocab_size) {
  FKV_CHECK_ARG(vocab_size >= 1, "logits must hold at least one value, got " << vocab_size);
  PromptLogits entry;
  entry.logits.assign(logits, logits + vocab_size);
  Mutate([&]() FKV_REQUIRES(mu_) {
    if (!prompt_logits_) {
      FKV_THROW(InvalidStateError, "store_logits needs CacheConfig(enable_prefix_caching=True, "
                                   "max_prompt_logits > 0)");
    }
    const Sequence& seq = FindResident(seq_id, "store the logits of");
    const int64_t n = int64_t(seq.tokens.size());
    if (seq.num_computed != n) {
      FKV_THROW(InvalidStateError, "sequence " << seq_id << " has K/V for " << seq.num_computed
                                               << " of its " << n << " tokens: write them all and "
                                               << "mark_computed(seq_id, " << n << ") first");
    }
    const int64_t full = n / config_.block_size;
    // Computing every token published every full block: chain_key names the last one.
    FKV_CHECK_INVARIANT(seq.blocks_published == full,
                        "sequence " << seq_id << ": " << seq.blocks_published << " of " << full
                                    << " computed full blocks published");
    entry.parent = seq.chain_key;
    entry.has_full_blocks = full > 0;
    entry.tail.assign(seq.tokens.begin() + full * config_.block_size, seq.tokens.end());
    PromptLogits* stored =
        prompt_logits_->Find(entry.parent, entry.tail.data(), int64_t(entry.tail.size()));
    if (stored != nullptr) {  // the same prompt again: new logits, the same tail copy
      stored->logits.swap(entry.logits);
      return;
    }
    // The entry first (it may fail: bad_alloc), then the copy's block, which cannot fail once
    // checked and prepared: nothing is evicted for an entry that is not there. The block is
    // reclaimed as if the entry were not stored yet (it has no tail block, so it is skipped);
    // only then does the store drop its least recently used entry if it is over capacity.
    const bool copy_tail = !entry.tail.empty();
    if (copy_tail) {
      if (AvailableBlocks() < 1) ThrowOutOfBlocks(1, AvailableBlocks());
      PrepareAllocation(1);
    }
    prompt_logits_->Add(std::move(entry));
    if (copy_tail) {
      AllocateDevice(1);
      PromptLogits& stored_entry = prompt_logits_->MostRecent();
      stored_entry.tail_block = scratch_[0];
      storage_->CopyBlock(seq.blocks.back(), stored_entry.tail_block);
    }
    const BlockId dropped = prompt_logits_->DropOverCapacity();
    if (dropped != kNullBlock) pool_.Free(&dropped, 1);
  });
}

void PagedKvCache::AppendTokens(SeqId seq_id, const int32_t* tokens, int64_t n) {
  FKV_CHECK_ARG(n >= 0, "token count must be >= 0, got " << n);
  CheckTokenIds(tokens, 0, n);
  Mutate([&]() FKV_REQUIRES(mu_) {
    Sequence& seq = FindResident(seq_id, "append to");
    const AppendPlan plan = PlanAppend(seq, n, TailRefCount(seq));
    ReserveFor(seq.tokens, size_t(n));
    ReserveFor(seq.blocks, size_t(plan.blocks));
    AllocateDevice(plan.blocks);
    int64_t next = 0;
    AppendWithBlocks(seq, tokens, n, plan.copy_tail, scratch_.data(), &next);
  });
}

void PagedKvCache::AppendBatch(const SeqId* seq_ids, const int32_t* tokens, int64_t n) {
  FKV_CHECK_ARG(n >= 0, "batch size must be >= 0, got " << n);
  CheckTokenIds(tokens, 0, n);
  Mutate([&]() FKV_REQUIRES(mu_) {
    const QueueGuard queue_guard{this};
    const uint64_t stamp = ++batch_stamp_;
    const int32_t block_size = config_.block_size;
    batch_scratch_.clear();
    shared_tails_.clear();
    const bool caching = prefix_ != nullptr;
    // The sequences and their last blocks, then those blocks' ref counts in one pool call (one
    // lock per step instead of one per sequence), then the plan.
    tail_scratch_.clear();
    for (int64_t i = 0; i < n; ++i) {
      Sequence& seq = FindResident(seq_ids[i], "append to");
      FKV_CHECK_ARG(seq.batch_stamp != stamp,
                    "seq_ids[" << i << "] = " << seq_ids[i] << " repeats in the batch");
      seq.batch_stamp = stamp;
      batch_scratch_.push_back(BatchEntry{&seq, false});
      tail_scratch_.push_back(seq.blocks.back());
    }
    ref_count_scratch_.resize(size_t(n));
    pool_.RefCounts(tail_scratch_.data(), n, ref_count_scratch_.data());
    int64_t needed = 0;
    if (caching) publishers_.resize(size_t(n));
    int64_t num_publishers = 0;
    int64_t to_publish = 0;  // blocks
    for (int64_t i = 0; i < n; ++i) {
      BatchEntry& entry = batch_scratch_[size_t(i)];
      Sequence& seq = *entry.seq;
      // One division gives both the full blocks and whether the last block is full.
      const uint64_t length = seq.tokens.size();
      const int64_t full_blocks = int64_t(length / uint64_t(block_size));
      const bool tail_full = length % uint64_t(block_size) == 0;
      const int32_t holders = tail_full ? 0 : ref_count_scratch_[size_t(i)];
      const AppendPlan plan = PlanAppend(seq, 1, holders - CountEarlierTailCopies(seq, holders));
      needed += plan.blocks;
      entry.copy_tail = plan.copy_tail;
      ReserveFor(seq.tokens, 1);  // nothing may fail once blocks are taken
      ReserveFor(seq.blocks, size_t(plan.blocks));
      if (!caching) continue;
      to_publish += full_blocks - seq.blocks_published;
      // A decode token is sampled from the logits of the sequence's last token, so every token
      // before it has its K/V written: full blocks among them not yet offered get published.
      // About one sequence in block_size qualifies, unpredictably: it is listed without a branch
      // (its full blocks counted by the division above), and the tokens of its last block
      // (usually the one KeyPending keys) and its chain key start loading.
      const bool publish = seq.blocks_published < full_blocks;
      publishers_[size_t(num_publishers)] = entry.seq;
      num_publishers += publish;
      const int32_t* tokens_end = seq.tokens.data() + length;
      const void* nothing = &block_size;  // a line in cache already
      __builtin_prefetch(publish ? tokens_end - block_size : nothing);
      __builtin_prefetch(publish ? tokens_end - 1 : nothing);
      __builtin_prefetch(publish ? static_cast<const void*>(&seq.chain_key) : nothing, 1);
    }
    if (caching) ReservePublication(num_publishers, to_publish);
    AllocateDevice(needed);
    if (caching) {
      // Keys before the appends (from the tokens as they are now), inserts after them.
      // Usually each publisher has exactly its last full block to offer and no events are
      // logged: then the (empty) queue is filled by index, as QueuePublication would fill it,
      // with each job's output where KeyPending puts it.
      const auto one_block = [&](const Sequence& seq) FKV_NO_THREAD_SAFETY_ANALYSIS {
        return (seq.blocks_published + 2) * block_size > int64_t(seq.tokens.size());
      };
      if (!hash_blocks_ &&
          std::all_of(publishers_.data(), publishers_.data() + num_publishers,
                      [&](const Sequence* seq) { return one_block(*seq); })) {
        const size_t count = size_t(num_publishers);
        assert(key_jobs_.empty() && publishing_.empty() && publish_blocks_.empty());
        key_jobs_.resize(count);
        publishing_.resize(count);
        publish_blocks_.resize(count);
        if (key_scratch_.size() < count) key_scratch_.resize(count);
        for (size_t j = 0; j < count; ++j) {
          Sequence& seq = *publishers_[j];
          const int64_t block = seq.blocks_published;
          seq.num_computed = int64_t(seq.tokens.size());
          seq.blocks_published = block + 1;
          key_jobs_[j] = KeyChainJob{seq.chain_key, seq.tokens.data() + block * block_size, 1,
                                     &key_scratch_[j]};
          publishing_[j] = &seq;
          publish_blocks_[j] = seq.blocks[size_t(block)];
        }
      } else {
        for (int64_t j = 0; j < num_publishers; ++j) {
          Sequence& seq = *publishers_[size_t(j)];
          seq.num_computed = int64_t(seq.tokens.size());
          QueuePublication(seq);
        }
      }
      KeyPending();
    }
    int64_t next = 0;
    for (int64_t i = 0; i < n; ++i) {
      const BatchEntry& entry = batch_scratch_[i];
      Sequence& seq = *entry.seq;
      seq.num_computed = std::max(seq.num_computed, int64_t(seq.tokens.size()));
      AppendWithBlocks(seq, tokens + i, 1, entry.copy_tail, scratch_.data(), &next);
    }
    if (caching) InsertPending();
  });
}

int32_t PagedKvCache::CountEarlierTailCopies(const Sequence& seq, int32_t tail_holders) {
  // Forked siblings in one batch may share a partly filled last block held by r tables: the
  // first r - 1 of them copy it, the last one finds itself sole owner and writes in place.
  if (tail_holders <= 1) return 0;
  for (auto& [block, count] : shared_tails_) {
    if (block == seq.blocks.back()) return count++;
  }
  shared_tails_.emplace_back(seq.blocks.back(), 1);
  return 0;
}

bool PagedKvCache::CanAllocate(int64_t num_tokens) const {
  FKV_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got " << num_tokens);
  MutexLock lock(&mu_);
  return BlocksForTokens(num_tokens, config_.block_size) <= AvailableBlocks();
}

bool PagedKvCache::CanAppend(SeqId seq_id, int64_t num_tokens) const {
  FKV_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got " << num_tokens);
  MutexLock lock(&mu_);
  const Sequence& seq = Find(seq_id);
  if (seq.swapped) return false;
  // More tokens than the whole cache holds never fit (and would overflow the plan's arithmetic).
  if (num_tokens > int64_t{config_.num_blocks} * config_.block_size) return false;
  return PlanAppend(seq, num_tokens, TailRefCount(seq)).blocks <= AvailableBlocks();
}

Sequence& PagedKvCache::CheckComputedCount(SeqId seq_id, int64_t num_tokens) {
  Sequence& seq = Find(seq_id);
  FKV_CHECK_ARG(num_tokens >= 0 && num_tokens <= int64_t(seq.tokens.size()),
                "num_tokens must be in [0, " << seq.tokens.size() << "] for sequence " << seq_id
                                             << ", got " << num_tokens);
  return seq;
}

void PagedKvCache::ApplyComputed(Sequence& seq, int64_t num_tokens) {
  seq.num_computed = std::max(seq.num_computed, num_tokens);
  if (prefix_ && !seq.swapped) QueuePublication(seq);
}

void PagedKvCache::MarkComputed(SeqId seq_id, int64_t num_tokens) {
  MutexLock lock(&mu_);
  MarkComputedLocked(seq_id, num_tokens);
}

void PagedKvCache::MarkComputedLocked(SeqId seq_id, int64_t num_tokens) {
  const QueueGuard queue_guard{this};
  Sequence& seq = CheckComputedCount(seq_id, num_tokens);
  if (prefix_) {
    ReservePublication(1, std::max(seq.num_computed, num_tokens) / config_.block_size -
                              seq.blocks_published);
  }
  ApplyComputed(seq, num_tokens);
  if (prefix_) PublishPending();
}

void PagedKvCache::MarkComputedBatch(const SeqId* seq_ids, const int64_t* num_tokens,
                                     int64_t n) {
  FKV_CHECK_ARG(n >= 0, "batch size must be >= 0, got " << n);
  MutexLock lock(&mu_);
  const QueueGuard queue_guard{this};
  batch_scratch_.clear();
  for (int64_t i = 0; i < n; ++i) {
    batch_scratch_.push_back(
        BatchEntry{&CheckComputedCount(seq_ids[i], num_tokens[i]), false});
  }
  if (prefix_) {  // (a repeated sequence counted again: an upper bound)
    int64_t blocks = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Sequence& seq = *batch_scratch_[size_t(i)].seq;
      blocks += std::max(seq.num_computed, num_tokens[i]) / config_.block_size -
                seq.blocks_published;
    }
    ReservePublication(n, blocks);
  }
  // A sequence may repeat: every count first (the largest wins), then one publication each.
  const uint64_t stamp = ++batch_stamp_;
  for (int64_t i = 0; i < n; ++i) {
    Sequence& seq = *batch_scratch_[i].seq;
    seq.num_computed = std::max(seq.num_computed, num_tokens[i]);
  }
  for (const BatchEntry& entry : batch_scratch_) {
    if (entry.seq->batch_stamp == stamp) continue;
    entry.seq->batch_stamp = stamp;
    ApplyComputed(*entry.seq, entry.seq->num_computed);
  }
  if (prefix_) PublishPending();
}

void PagedKvCache::Fork(SeqId parent, SeqId child) { ForkFirst(parent, child, std::nullopt); }

void PagedKvCache::Fork(SeqId parent, SeqId child, int64_t num_tokens) {
  ForkFirst(parent, child, num_tokens);
}

void PagedKvCache::ForkFirst(SeqId parent, SeqId child, std::optional<int64_t> num_tokens) {
  Mutate([&]() FKV_REQUIRES(mu_) {
    const Sequence& source = FindResident(parent, "fork");
    FKV_CHECK_ARG(sequences_.count(child) == 0, "sequence " << child << " already exists");
    const int64_t parent_tokens = int64_t(source.tokens.size());
    const int64_t n = num_tokens.value_or(parent_tokens);
    FKV_CHECK_ARG(n >= 1 && n <= parent_tokens, "fork of sequence " << parent << " takes 1 to "
                                                    << parent_tokens << " leading tokens, got "
                                                    << n);
    const QueueGuard queue_guard{this};
    // The copy, the map's node and the publication scratch (allocations) before the references.
    // Fields one by one: the token and block lists of the prefix only, O(its length).
    Sequence prefix;
    prefix.blocks.assign(source.blocks.begin(),
                         source.blocks.begin() + BlocksForTokens(n, config_.block_size));
    prefix.tokens.assign(source.tokens.begin(), source.tokens.begin() + n);
    prefix.num_computed = std::min(source.num_computed, n);
    prefix.blocks_published = source.blocks_published;
    prefix.chain_key = source.chain_key;
    prefix.root_key = source.root_key;
    prefix.priority = source.priority;
    prefix.root_hash = source.root_hash;
    prefix.chain_hash = source.chain_hash;
    // The parent published past the prefix: the child's chain restarts from the root (the chain
    // state of a shorter run is not kept) and its computed full blocks are published again, as
    // swap_in does; those the index holds already are skipped.
    const bool republish = prefix.blocks_published > n / config_.block_size;
    if (republish) {
      prefix.blocks_published = 0;
      prefix.chain_key = prefix.root_key;
      prefix.chain_hash = prefix.root_hash;
      ReservePublication(1, prefix.num_computed / config_.block_size);
    }
    Sequence& added = sequences_.emplace(child, std::move(prefix)).first->second;
    pool_.IncRef(added.blocks.data(), int64_t(added.blocks.size()));
    if (republish) {
      ApplyComputed(added, added.num_computed);
      PublishPending();
    }
  });
}

void PagedKvCache::FreeSequence(SeqId seq_id) {
  Mutate([&]() FKV_REQUIRES(mu_) { Release(seq_id); });
}

void PagedKvCache::FreeSequence(SeqId seq_id, int64_t num_computed) {
  Mutate([&]() FKV_REQUIRES(mu_) {
    const Sequence& seq = CheckComputedCount(seq_id, num_computed);
    // Release's scratch is reserved first: nothing may fail once blocks are published.
    if (prefix_) ref_count_scratch_.reserve(seq.blocks.size());
    MarkComputedLocked(seq_id, num_computed);
    Release(seq_id);
  });
}

void PagedKvCache::Release(SeqId seq_id) {
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) FKV_THROW(UnknownSequence, "unknown sequence " << seq_id);
  const Sequence& seq = it->second;
  if (seq.swapped) {
    host_pool_->Free(seq.blocks.data(), int64_t(seq.blocks.size()));
    --num_swapped_;
  } else {
    ReleaseDeviceBlocks(seq.blocks, seq.priority);
  }
  sequences_.erase(it);
}

void PagedKvCache::SwapOut(SeqId seq_id) {
  Mutate([&]() FKV_REQUIRES(mu_) {
    Sequence& seq = FindResident(seq_id, "swap out");
    const int64_t n = int64_t(seq.blocks.size());
    if (!host_pool_) {
      allocation_failures_.fetch_add(1, std::memory_order_relaxed);
      FKV_THROW(OutOfBlocksError, "cannot swap out sequence " << seq_id
                                      << ": the cache has no host tier (num_host_blocks=0)");
    }
    std::vector<BlockId> host_blocks(static_cast<size_t>(n));
    try {
      host_pool_->Allocate(n, host_blocks.data());
    } catch (const OutOfBlocksError& e) {
      allocation_failures_.fetch_add(1, std::memory_order_relaxed);
      FKV_THROW(OutOfBlocksError, "cannot swap out sequence " << seq_id << " (host tier): "
                                                              << e.what());
    }
    for (int64_t i = 0; i < n; ++i) {
      KvStorage::CopyBlockBetween(*storage_, seq.blocks[i], *host_storage_, host_blocks[i]);
    }
    try {
      ReleaseDeviceBlocks(seq.blocks, seq.priority);  // fails (bad_alloc) before it changes
    } catch (...) {
      host_pool_->Free(host_blocks.data(), n);
      throw;
    }
    seq.blocks = std::move(host_blocks);
    seq.swapped = true;
    ++num_swapped_;
    swap_outs_.fetch_add(1, std::memory_order_relaxed);
    blocks_swapped_out_.fetch_add(n, std::memory_order_relaxed);
  });
}

void PagedKvCache::SwapIn(SeqId seq_id) {
  Mutate([&]() FKV_REQUIRES(mu_) {
    const QueueGuard queue_guard{this};
    Sequence& seq = Find(seq_id);
    if (!seq.swapped) {
      FKV_THROW(InvalidStateError, "cannot swap in sequence " << seq_id << ": it is resident");
    }
    const int64_t n = int64_t(seq.blocks.size());
    if (prefix_) ReservePublication(1, seq.num_computed / config_.block_size);
    AllocateDevice(n);
    for (int64_t i = 0; i < n; ++i) {
      KvStorage::CopyBlockBetween(*host_storage_, seq.blocks[i], *storage_, scratch_[i]);
    }
    host_pool_->Free(seq.blocks.data(), n);
    seq.blocks.assign(scratch_.begin(), scratch_.begin() + n);
    seq.swapped = false;
    --num_swapped_;
    if (prefix_) {  // fresh blocks: offer the computed ones to the index again
      seq.blocks_published = 0;
      seq.chain_key = seq.root_key;
      seq.chain_hash = seq.root_hash;
      ApplyComputed(seq, seq.num_computed);
      PublishPending();
    }
    swap_ins_.fetch_add(1, std::memory_order_relaxed);
    blocks_swapped_in_.fetch_add(n, std::memory_order_relaxed);
  });
}

bool PagedKvCache::Contains(SeqId seq_id) const {
  MutexLock lock(&mu_);
  return sequences_.count(seq_id) != 0;
}

bool PagedKvCache::IsSwapped(SeqId seq_id) const {
  MutexLock lock(&mu_);
  return Find(seq_id).swapped;
}

int64_t PagedKvCache::NumSequences() const {
  MutexLock lock(&mu_);
  return int64_t(sequences_.size());
}

int64_t PagedKvCache::NumTokens(SeqId seq_id) const {
  MutexLock lock(&mu_);
  return int64_t(Find(seq_id).tokens.size());
}

int64_t PagedKvCache::NumComputed(SeqId seq_id) const {
  MutexLock lock(&mu_);
  return Find(seq_id).num_computed;
}

std::vector<int32_t> PagedKvCache::Tokens(SeqId seq_id) const {
  MutexLock lock(&mu_);
  return Find(seq_id).tokens;
}

std::vector<BlockId> PagedKvCache::BlockTable(SeqId seq_id) const {
  MutexLock lock(&mu_);
  return Find(seq_id).blocks;
}

std::vector<int32_t> PagedKvCache::SlotMapping(SeqId seq_id, int64_t start, int64_t end) const {
  MutexLock lock(&mu_);
  const Sequence& seq = Find(seq_id);
  if (seq.swapped) {
    FKV_THROW(InvalidStateError,
              "sequence " << seq_id << " is swapped out: it has no device slots");
  }
  const int64_t num_tokens = int64_t(seq.tokens.size());
  FKV_CHECK_ARG(0 <= start && start <= end && end <= num_tokens,
                "need 0 <= start <= end <= num_tokens=" << num_tokens << ", got start=" << start
                                                        << ", end=" << end);
  const int32_t block_size = config_.block_size;
  std::vector<int32_t> slots(size_t(end - start));
  for (int64_t pos = start; pos < end; ++pos) {
    slots[pos - start] = seq.blocks[pos / block_size] * block_size + int32_t(pos % block_size);
  }
  return slots;
}

BatchMetadata PagedKvCache::BuildBatchMetadata(const SeqId* seq_ids, int64_t n) const {
  FKV_CHECK_ARG(n >= 0, "batch size must be >= 0, got " << n);
  MutexLock lock(&mu_);
  std::vector<const Sequence*> batch(static_cast<size_t>(n));
  BatchMetadata m;
  m.batch_size = n;
  int64_t nnz = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Sequence& seq = Find(seq_ids[i]);
    if (seq.swapped) {
      FKV_THROW(InvalidStateError, "seq_ids[" << i << "] = " << seq_ids[i]
                                              << " is swapped out (swap_in first)");
    }
    batch[i] = &seq;
    m.max_blocks = std::max<int64_t>(m.max_blocks, int64_t(seq.blocks.size()));
    nnz += int64_t(seq.blocks.size());
  }
  const int32_t block_size = config_.block_size;
  m.block_tables.assign(size_t(n * m.max_blocks), kNullBlock);
  m.context_lens.resize(size_t(n));
  m.indptr.resize(size_t(n + 1));
  m.indices.resize(size_t(nnz));
  m.last_block_len.resize(size_t(n));
  m.slot_mapping.resize(size_t(n));
  m.num_computed.resize(size_t(n));
  m.indptr[0] = 0;
  int32_t* indices = m.indices.data();
  for (int64_t i = 0; i < n; ++i) {
    const Sequence& seq = *batch[i];
    const int32_t num_tokens = int32_t(seq.tokens.size());
    const int64_t num_blocks = int64_t(seq.blocks.size());
    std::copy(seq.blocks.begin(), seq.blocks.end(), m.block_tables.begin() + i * m.max_blocks);
    std::copy(seq.blocks.begin(), seq.blocks.end(), indices);
    indices += num_blocks;
    m.context_lens[i] = num_tokens;
    m.indptr[i + 1] = m.indptr[i] + int32_t(num_blocks);
    m.last_block_len[i] = num_tokens - int32_t(num_blocks - 1) * block_size;
    m.slot_mapping[i] = seq.blocks.back() * block_size + (num_tokens - 1) % block_size;
    m.num_computed[i] = int32_t(seq.num_computed);
  }
  return m;
}

void PagedKvCache::WriteKv(int32_t layer, const int32_t* slots, int64_t n, const void* k,
                           const void* v, DType src_dtype) {
  // The blocks of the slots, one per run of slots in the same block (a prefill chunk's slots run
  // through whole blocks, a decode step's are one per sequence), checked in batches from a stack
  // buffer (no allocation). Slots out of range are left to WriteTokens to report.
  const int32_t block_size = config_.block_size;
  const int64_t num_slots = pool_.num_blocks() * block_size;
  constexpr int64_t kBatch = 64;
  BlockId blocks[kBatch];
  int64_t first_slot[kBatch];  // the index of a slot in blocks[j], for the message
  int64_t count = 0;
  for (int64_t i = 0; i <= n; ++i) {
    if (i == n || count == kBatch) {
      const int64_t unheld = count > 0 ? pool_.FindUnheld(blocks, count) : -1;
      if (unheld >= 0) {
        const int64_t at = first_slot[unheld];
        FKV_THROW(InvalidStateError,
                  "slots[" << at << "] = " << slots[at] << " is in block " << blocks[unheld]
                           << ", which no sequence or cache entry holds: slots taken before "
                              "free_sequence or swap_out are stale (take them again with "
                              "slot_mapping)");
      }
      count = 0;
      if (i == n) break;
    }
    if (slots[i] < 0 || slots[i] >= num_slots) continue;
    // In the previous slot's block: no division.
    if (count > 0 && uint32_t(slots[i] - blocks[count - 1] * block_size) < uint32_t(block_size)) {
      continue;
    }
    blocks[count] = slots[i] / block_size;
    first_slot[count++] = i;
  }
  storage_->WriteTokens(layer, slots, n, k, v, src_dtype);
}

int64_t PagedKvCache::GatherKv(SeqId seq_id, int32_t layer, std::vector<uint8_t>* k,
                               std::vector<uint8_t>* v) const {
  MutexLock lock(&mu_);
  const Sequence& seq = Find(seq_id);
  const KvStorage& storage = seq.swapped ? *host_storage_ : *storage_;
  const int64_t num_tokens = int64_t(seq.tokens.size());
  const int32_t block_size = config_.block_size;
  std::vector<int32_t> slots(static_cast<size_t>(num_tokens));
  for (int64_t pos = 0; pos < num_tokens; ++pos) {
    slots[pos] = seq.blocks[pos / block_size] * block_size + int32_t(pos % block_size);
  }
  const size_t bytes =
      size_t(num_tokens * storage.ElementsPerToken() * DTypeSize(storage.ReadDType()));
  k->resize(bytes);
  v->resize(bytes);
  storage.ReadTokens(layer, slots.data(), num_tokens, k->data(), v->data());
  return num_tokens;
}

CacheStats PagedKvCache::Stats() const {
  CacheStats s;
  s.num_blocks = pool_.num_blocks();
  s.free_blocks = pool_.num_free_blocks();
  s.used_blocks = pool_.num_used_blocks();
  s.num_host_blocks = host_pool_ ? host_pool_->num_blocks() : 0;
  s.free_host_blocks = host_pool_ ? host_pool_->num_free_blocks() : 0;
  {
    MutexLock lock(&mu_);
    s.num_sequences = int64_t(sequences_.size());
    s.num_swapped_sequences = num_swapped_;
    if (prefix_) {
      s.cached_blocks = prefix_->size();
      s.evictable_blocks = prefix_->evictable().size();
      s.events_dropped = prefix_->events_dropped();
    }
    s.prefix_query_tokens = prefix_query_tokens_;
    s.prefix_hit_tokens = prefix_hit_tokens_;
    s.evictions = evictions_;
    s.prompt_logits = prompt_logits_ ? prompt_logits_->size() : 0;
    s.prompt_logits_hits = prompt_logits_hits_;
    s.tier_blocks_imported = tier_blocks_imported_;
    if (export_) {
      s.tier_writes_queued = export_->offered();
      s.tier_writes_skipped = export_->skipped();
      s.tier_write_queue = export_->pending() + export_->in_flight();
    }
  }
  s.blocks_allocated = blocks_allocated_.load(std::memory_order_relaxed);
  s.allocation_failures = allocation_failures_.load(std::memory_order_relaxed);
  s.cow_copies = cow_copies_.load(std::memory_order_relaxed);
  s.swap_outs = swap_outs_.load(std::memory_order_relaxed);
  s.swap_ins = swap_ins_.load(std::memory_order_relaxed);
  s.blocks_swapped_out = blocks_swapped_out_.load(std::memory_order_relaxed);
  s.blocks_swapped_in = blocks_swapped_in_.load(std::memory_order_relaxed);
  s.bytes_used = s.used_blocks * storage_->bytes_per_block();
  s.bytes_total = storage_->total_bytes();
  return s;
}

PressureLevel PagedKvCache::MemoryPressure() const {
  MutexLock lock(&mu_);
  return PressureLocked();
}

PressureLevel PagedKvCache::PressureLocked() const {
  return ClassifyPressure(AvailableBlocks(), pool_.num_blocks(), config_.high_watermark,
                          config_.critical_watermark);
}

void PagedKvCache::ResetPrefixCache() {
  Mutate([&]() FKV_REQUIRES(mu_) {
    if (!prefix_) return;
    // The lists first (allocations); the store's Clear allocates before it clears, and nothing
    // after it can fail.
    const std::vector<BlockId> cached = prefix_->CachedBlocks();
    const std::vector<BlockId> copies = prompt_logits_ ? prompt_logits_->Clear()
                                                       : std::vector<BlockId>{};
    prefix_->Clear();
    pool_.Free(cached.data(), int64_t(cached.size()));  // the index's references
    pool_.Free(copies.data(), int64_t(copies.size()));
  });
}

int64_t PagedKvCache::ImportBlocks(const int32_t* tokens, int64_t n,
                                   const std::string& namespace_id, const BlockImport& import) {
  CheckPrompt(tokens, n);
  const int32_t block_size = config_.block_size;
  const int64_t end = import.first_block + import.num_blocks;
  FKV_CHECK_ARG(import.first_block >= 0 && import.num_blocks >= 0 &&
                    (import.num_blocks == 0 || import.payloads != nullptr) &&
                    end <= n / block_size,
                "bad block import: blocks [" << import.first_block << ", " << end << ") of "
                                             << n / block_size << " full blocks");
  int64_t imported = 0;
  Mutate([&]() FKV_REQUIRES(mu_) {
    if (!prefix_ || import.num_blocks == 0) return;
    // Where the device lookup stops; the import must continue it without a gap.
    std::vector<BlockId> hits;
    const int64_t h = FindCachedBlocks(keyer_.Root(namespace_id), tokens, end, &key_scratch_,
                                       &hits);
    if (h < import.first_block || h >= end) return;
    // The hits are kept from eviction while the fresh blocks are taken (held like a table's).
    int64_t count = std::min(end - h, AvailableBlocks() - CountEvictable(hits));
    if (count <= 0) return;
    std::vector<PrefixKey> keys(static_cast<size_t>(count));
    keyer_.Chain(h == 0 ? keyer_.Root(namespace_id) : key_scratch_[size_t(h - 1)],
                 tokens + h * block_size, count, block_size, keys.data());
    std::vector<BlockHash> hashes;
    if (prefix_->logs_events()) {
      hashes.resize(static_cast<size_t>(h + count));
      HashBlocks(RootHash(reinterpret_cast<const uint8_t*>(namespace_id.data()),
                          namespace_id.size()),
                 tokens, h + count, block_size, hashes.data());
    }
    std::vector<BlockId> fresh(static_cast<size_t>(count));
    std::vector<uint8_t> valid(import.copy ? size_t(count) : 0);  // of each block, by copy
    ref_count_scratch_.reserve(hits.size());  // ReleaseDeviceBlocks below
    block_scratch_.reserve(size_t(count));
    PrepareAllocation(count);  // the last step that may fail
    for (BlockId block : hits) {
      if (prefix_->evictable().Contains(block)) prefix_->evictable().Remove(block);
    }
    pool_.IncRef(hits.data(), int64_t(hits.size()));
    AllocateDevice(count);
    std::copy(scratch_.begin(), scratch_.begin() + count, fresh.begin());
    const size_t bytes = size_t(storage_->bytes_per_block());
    const uint8_t* const* payload = import.payloads + (h - import.first_block);
    int64_t copied = 0;
    if (!import.copy) {
      for (; copied < count; ++copied) {
        std::memcpy(storage_->BlockData(fresh[size_t(copied)]), payload[copied], bytes);
      }
    } else {
      // Copied (and checked) on the library's threads: a restore is bound by this pass.
      const auto copy = [&](int32_t, int64_t i) {
        valid[size_t(i)] = import.copy(h - import.first_block + i,
                                       storage_->BlockData(fresh[size_t(i)]));
      };
      try {
        ParallelFor(count, DefaultNumThreads(), copy);
      } catch (...) {  // the threads could not run it (nothing may fail here): run it here
        for (int64_t i = 0; i < count; ++i) copy(0, i);
      }
      while (copied < count && valid[size_t(copied)]) ++copied;
    }
    if (copied < count) {  // a block failed its check: it and the rest go back to the pool
      pool_.Free(fresh.data() + copied, count - copied);
      fresh.resize(size_t(copied));
    }
    count = copied;
    // Each fresh block's allocation reference becomes the index's. A block whose content is
    // cached already (under a later key of the chain) is not inserted: it is freed.
    block_scratch_.clear();
    prefix_->InsertBatch(keys.data(), fresh.data(), hashes.empty() ? nullptr : hashes.data() + h,
                         count, &block_scratch_);
    for (BlockId block : fresh) {
      if (!prefix_->IsCached(block)) pool_.Free(&block, 1);
    }
    for (auto it = block_scratch_.rbegin(); it != block_scratch_.rend(); ++it) {
      prefix_->evictable().Add(*it, 0, prefix_->PublishOrder(*it));  // the end first
    }
    imported = int64_t(block_scratch_.size());
    tier_blocks_imported_ += imported;
    ReleaseDeviceBlocks(hits, 0);
  });
  return imported;
}

int64_t PagedKvCache::TakeExports(int64_t max, BlockId* blocks, BlockHash* hashes) {
  FKV_CHECK_ARG(max >= 0, "max must be >= 0, got " << max);
  MutexLock lock(&mu_);
  return export_ ? export_->Take(max, blocks, hashes) : 0;
}

void PagedKvCache::FinishExports(const BlockId* blocks, int64_t n) {
  Mutate([&]() FKV_REQUIRES(mu_) {
    if (!export_ || n == 0) return;
    export_->Finish(blocks, n);
    pool_.Free(blocks, n);  // the pins
    // A cached block left with the index's reference only becomes evictable (the pin kept it
    // from becoming so when its last table released it).
    for (int64_t i = 0; i < n; ++i) {
      const BlockId block = blocks[i];
      if (pool_.RefCount(block) == 1 && prefix_->IsCached(block) &&
          !prefix_->evictable().Contains(block)) {
        prefix_->evictable().Add(block, 0, prefix_->PublishOrder(block));
      }
    }
  });
}

std::vector<CacheEvent> PagedKvCache::DrainEvents() {
  MutexLock lock(&mu_);
  return prefix_ ? prefix_->DrainEvents() : std::vector<CacheEvent>{};
}

void PagedKvCache::SetPressureCallback(PressureCallback callback) {
  auto shared = callback ? std::make_shared<const PressureCallback>(std::move(callback)) : nullptr;
  MutexLock lock(&mu_);
  pressure_callback_.swap(shared);
  // The previous callback is released here, under the lock but after the swap; its destructor
  // must not call back into the cache.
}

void PagedKvCache::CheckChains(SeqId seq_id, const Sequence& seq) const {
  const int64_t n = seq.blocks_published;
  PrefixKey key = seq.root_key;
  if (n > 0) {
    std::vector<PrefixKey> keys(static_cast<size_t>(n));
    keyer_.Chain(seq.root_key, seq.tokens.data(), n, config_.block_size, keys.data());
    key = keys.back();
  }
  FKV_CHECK_INVARIANT(key == seq.chain_key, "sequence " << seq_id << ": chain key after "
                                                         << n << " published blocks differs "
                                                         << "from its tokens'");
  if (!hash_blocks_) return;
  BlockHash hash = seq.root_hash;
  if (n > 0) {
    std::vector<BlockHash> hashes(static_cast<size_t>(n));
    HashBlocks(seq.root_hash, seq.tokens.data(), n, config_.block_size, hashes.data());
    hash = hashes.back();
  }
  FKV_CHECK_INVARIANT(hash == seq.chain_hash, "sequence " << seq_id << ": chain hash after "
                                                           << n << " published blocks differs "
                                                           << "from its tokens'");
}

void PagedKvCache::CheckInvariants() const {
  pool_.CheckInvariants();
  if (host_pool_) host_pool_->CheckInvariants();
  MutexLock lock(&mu_);
  std::vector<int32_t> device_refs(size_t(pool_.num_blocks()), 0);
  std::vector<int32_t> host_refs(size_t(host_pool_ ? host_pool_->num_blocks() : 0), 0);
  int64_t swapped = 0;
  for (const auto& [seq_id, seq] : sequences_) {
    const int64_t num_tokens = int64_t(seq.tokens.size());
    FKV_CHECK_INVARIANT(num_tokens >= 1, "sequence " << seq_id << " has no tokens");
    FKV_CHECK_INVARIANT(
        int64_t(seq.blocks.size()) == BlocksForTokens(num_tokens, config_.block_size),
        "sequence " << seq_id << " has " << seq.blocks.size() << " blocks for " << num_tokens
                    << " tokens");
    FKV_CHECK_INVARIANT(seq.num_computed >= 0 && seq.num_computed <= num_tokens,
                        "sequence " << seq_id << " num_computed " << seq.num_computed);
    FKV_CHECK_INVARIANT(seq.blocks_published <= seq.num_computed / config_.block_size,
                        "sequence " << seq_id << " published " << seq.blocks_published
                                    << " blocks of " << seq.num_computed << " computed tokens");
    if (prefix_) CheckChains(seq_id, seq);
    std::vector<int32_t>& refs = seq.swapped ? host_refs : device_refs;
    swapped += seq.swapped;
    for (BlockId block : seq.blocks) {
      FKV_CHECK_INVARIANT(block >= 0 && block < int64_t(refs.size()),
                          "sequence " << seq_id << " holds block " << block);
      ++refs[block];
    }
  }
  FKV_CHECK_INVARIANT(swapped == num_swapped_, swapped << " vs " << num_swapped_);
  if (prompt_logits_) {  // each stored tail copy is held once more, never cached
    prompt_logits_->CheckInvariants();
    for (BlockId block : prompt_logits_->TailBlocks()) {
      FKV_CHECK_INVARIANT(block >= 0 && block < int64_t(device_refs.size()) &&
                              !prefix_->IsCached(block),
                          "stored prompt tail copy " << block << " is not a private block");
      ++device_refs[block];
    }
  }
  FKV_CHECK_INVARIANT(key_jobs_.empty() && publishing_.empty() && publish_blocks_.empty(),
                      "the publication queue is not empty between calls");
  std::vector<int32_t> pins(device_refs.size(), 0);  // tier write queue entries
  if (export_) {
    export_->CheckInvariants();
    export_->CountPins(&pins);
  }
  int64_t cached = 0, evictable = 0;
  for (BlockId b = 0; b < BlockId(device_refs.size()); ++b) {
    const bool is_cached = prefix_ && prefix_->IsCached(b);
    FKV_CHECK_INVARIANT(pool_.RefCount(b) == device_refs[b] + pins[b] + (is_cached ? 1 : 0),
                        "device block " << b << " ref_count " << pool_.RefCount(b) << ", held by "
                                        << device_refs[b] << " tables and stored prompts, "
                                        << pins[b] << " tier writes, cached " << is_cached);
    if (!prefix_) continue;
    const bool is_evictable = prefix_->evictable().Contains(b);
    FKV_CHECK_INVARIANT(is_evictable == (is_cached && device_refs[b] == 0 && pins[b] == 0),
                        "block " << b << " evictable " << is_evictable << ", cached "
                                 << is_cached << ", held by " << device_refs[b] << " tables, "
                                 << pins[b] << " tier writes");
    cached += is_cached;
    evictable += is_evictable;
  }
  if (prefix_) {
    prefix_->CheckInvariants();
    FKV_CHECK_INVARIANT(cached == prefix_->size() && evictable == prefix_->evictable().size(),
                        "index size " << prefix_->size() << " vs " << cached << " cached; "
                                      << prefix_->evictable().size() << " vs " << evictable
                                      << " evictable");
  }
  for (BlockId b = 0; b < BlockId(host_refs.size()); ++b) {
    FKV_CHECK_INVARIANT(host_pool_->RefCount(b) == host_refs[b],
                        "host block " << b << " ref_count " << host_pool_->RefCount(b)
                                      << ", held by " << host_refs[b] << " tables");
  }
}

}  // namespace ferrum_kv
