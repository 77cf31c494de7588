#include "fuzz/cache_fuzzer.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/errors.h"
#include "fuzz/fault_injection.h"
#include "fuzz/state_digest.h"

namespace ferrum_kv::fuzz {

namespace {

constexpr int64_t kMaxSequences = 12;
constexpr int64_t kMaxBlocksPerSequence = 12;
constexpr int64_t kVocabSize = 5;  // of the stored logits
constexpr int32_t kTokenRange = 4;  // token ids 0..3: prompts share prefixes often

// A check of the driver failed (a bug in the cache, or in the driver).
class FuzzFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An injected failure left the cache changed: the cache cannot be driven further.
class GuaranteeViolation : public FuzzFailure {
 public:
  GuaranteeViolation(const std::string& operation, const std::string& what)
      : FuzzFailure(what), operation(operation) {}
  std::string operation;
};

const char* ExpectName(int expect) {
  static const char* const kNames[] = {"success", "UnknownSequence", "InvalidArgument",
                                       "InvalidStateError", "OutOfBlocksError"};
  return kNames[expect];
}

std::string Describe(const CacheConfig& c) {
  std::ostringstream s;
  s << "layers=" << c.num_layers << " heads=" << c.num_kv_heads << " head_dim=" << c.head_dim
    << " block_size=" << c.block_size << " blocks=" << c.num_blocks
    << " host_blocks=" << c.num_host_blocks << " dtype=" << DTypeName(c.dtype)
    << " prefix_caching=" << c.enable_prefix_caching << " events=" << c.enable_kv_events
    << " prompt_logits=" << c.max_prompt_logits
    << " eviction=" << EvictionPolicyName(c.eviction_policy);
  return s.str();
}

}  // namespace

void FuzzCounts::Add(const FuzzCounts& other) {
  steps += other.steps;
  errors += other.errors;
  out_of_blocks += other.out_of_blocks;
  prefix_hit_tokens += other.prefix_hit_tokens;
  whole_prompt_hits += other.whole_prompt_hits;
  evictions += other.evictions;
  cow_copies += other.cow_copies;
  swap_ins += other.swap_ins;
  faults_injected += other.faults_injected;
  for (const auto& [operation, violation] : other.violations) {
    auto& mine = violations[operation];
    if (mine.first == 0) mine.second = violation.second;
    mine.first += violation.first;
  }
  for (const auto& [operation, sites] : other.fault_sites) {
    fault_sites[operation].first += sites.first;
    fault_sites[operation].second += sites.second;
  }
}

CacheConfig CacheFuzzer::RandomConfig(std::mt19937_64& rng) {
  const auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  static const int32_t kBlockSizes[] = {1, 2, 3, 4, 8};
  CacheConfig c;
  c.num_layers = int32_t(uniform(1, 2));
  c.num_kv_heads = int32_t(uniform(1, 2));
  c.head_dim = int32_t(uniform(1, 4));
  c.block_size = kBlockSizes[uniform(0, 4)];
  c.num_blocks = int32_t(uniform(4, 40));
  c.dtype = DType(uniform(0, 6));  // the float dtypes and the quantized ones (types.h order)
  c.num_host_blocks = uniform(0, 3) == 0 ? 0 : int32_t(uniform(1, 24));
  c.enable_prefix_caching = uniform(0, 3) != 0;
  c.enable_kv_events = c.enable_prefix_caching && uniform(0, 1) == 0;
  c.max_prompt_logits = c.enable_prefix_caching && uniform(0, 2) != 0 ? int32_t(uniform(1, 4)) : 0;
  c.eviction_policy = EvictionPolicyKind(uniform(0, 3));
  return c;
}

CacheFuzzer::CacheFuzzer(PagedKvCache* cache, SeqId id_base, uint64_t seed, Options options)
    : cache_(cache),
      config_(cache->config()),
      options_(options),
      seed_(seed),
      rng_(seed),
      next_id_(id_base) {
  for (int i = 0; i < 3; ++i) prefixes_.push_back(RandomTokens(Uniform(0, 3 * config_.block_size)));
}

void CacheFuzzer::Fail(const std::string& what) const {
  std::ostringstream message;
  message << "fuzz seed " << seed_ << ", step " << counts_.steps << ", " << operation_ << ": "
          << what << " [" << Describe(config_) << "]";
  throw FuzzFailure(message.str());
}

uint64_t CacheFuzzer::Digest() const {
  std::vector<SeqId> ids;
  for (const auto& entry : model_) ids.push_back(entry.first);
  ids.insert(ids.end(), touched_.begin(), touched_.end());
  return StateDigest(*cache_, ids);
}

template <typename Call>
void CacheFuzzer::Run(const char* operation, Call&& call) {
  if (options_.sweep_faults) {
    const uint64_t before = Digest();
    for (int64_t n = 1;; ++n) {
      fault_injection::Arm(n);
      try {
        call();
      } catch (...) {
        const bool fired = !fault_injection::Armed();
        fault_injection::Arm(0);
        if (!fired) throw;  // the call's own error
        ++counts_.faults_injected;
        std::string broken;
        try {
          cache_->CheckInvariants();
          if (Digest() != before) broken = "the cache changed";
        } catch (const InvariantError& e) {
          broken = e.what();
        }
        if (!broken.empty()) {
          try {
            Fail("fault point " + std::to_string(n) + " (no strong guarantee): " + broken);
          } catch (const FuzzFailure& e) {
            throw GuaranteeViolation(operation, e.what());
          }
        }
        continue;  // the cache is as it was: the same call again, failing one point later
      }
      // Passed all n - 1 points it has (or absorbed the n-th fault and succeeded).
      const int64_t points = fault_injection::Armed() ? n - 1 : n;
      fault_injection::Arm(0);
      auto& sites = counts_.fault_sites[operation];
      ++sites.first;
      sites.second += points;
      return;
    }
  }
  call();
}

template <typename Call>
bool CacheFuzzer::Attempt(const char* operation, Expect expect, bool may_run_out, Call&& call) {
  operation_ = operation;
  const bool can_fail = expect != Expect::kSuccess || may_run_out;
  const uint64_t before = options_.exclusive && can_fail ? Digest() : 0;
  Expect got = Expect::kSuccess;
  std::string message;
  try {
    Run(operation, call);
  } catch (const OutOfBlocksError& e) {
    got = Expect::kOutOfBlocks;
    message = e.what();
  } catch (const InvalidStateError& e) {
    got = Expect::kInvalidState;
    message = e.what();
  } catch (const UnknownSequence& e) {
    got = Expect::kUnknown;
    message = e.what();
  } catch (const InvalidArgument& e) {
    got = Expect::kInvalidArgument;
    message = e.what();
  }
  try {
    cache_->CheckInvariants();
  } catch (const InvariantError& e) {
    Fail(e.what());
  }
  if (got == Expect::kSuccess) {
    if (expect != Expect::kSuccess) Fail(std::string("succeeded; expected ") + ExpectName(int(expect)));
    return true;
  }
  ++counts_.errors;
  counts_.out_of_blocks += got == Expect::kOutOfBlocks;
  if (got != expect && !(got == Expect::kOutOfBlocks && may_run_out)) {
    Fail(std::string("threw ") + ExpectName(int(got)) + " (" + message + "); expected " +
         ExpectName(int(expect)) + (may_run_out ? " or OutOfBlocksError" : ""));
  }
  if (options_.exclusive && Digest() != before) Fail("a call that threw changed the cache");
  return false;
}

std::vector<int32_t> CacheFuzzer::RandomTokens(int64_t n) {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int32_t& t : tokens) t = int32_t(Uniform(0, kTokenRange - 1));
  return tokens;
}

SeqId CacheFuzzer::Pick(int which) {
  std::vector<SeqId> ids;
  for (const auto& [id, seq] : model_) {
    if (which == 0 || (which == 1) != seq.swapped) ids.push_back(id);
  }
  if (ids.empty()) return -1;
  return ids[size_t(Uniform(0, int64_t(ids.size()) - 1))];
}

void CacheFuzzer::Step() {
  touched_.clear();
  // Weights of the operations, in the order of the switch below.
  static const int kWeights[] = {14, 8, 10, 14, 4, 6, 10, 4, 4, 12, 8, 4, 5, 1, 1};
  static const int kTotal = [] {
    int total = 0;
    for (int w : kWeights) total += w;
    return total;
  }();
  int roll = int(Uniform(0, kTotal - 1));
  int op = 0;
  while (roll >= kWeights[op]) roll -= kWeights[op++];
  // Out of blocks: an engine would finish or preempt something, often.
  if (counts_.out_of_blocks > out_of_blocks_seen_ && OneIn(2)) op = 6;
  out_of_blocks_seen_ = counts_.out_of_blocks;
  try {
    switch (op) {
      case 0: AddSequence(false); break;
      case 1: AddSequence(true); break;
      case 2: Append(); break;
      case 3: DecodeStep(); break;
      case 4: Metadata(); break;
      case 5: Fork(); break;
      case 6: Free(); break;
      case 7: SwapOut(); break;
      case 8: SwapIn(); break;
      case 9: WriteKv(); break;
      case 10: MarkComputed(); break;
      case 11: MarkComputedBatch(); break;
      case 12: StoreLogits(); break;
      case 13: ResetPrefixCache(); break;
      default: DrainEvents(); break;
    }
    CheckTouched();
  } catch (const FuzzFailure&) {
    throw;
  } catch (const std::exception& e) {
    Fail(std::string("unexpected exception: ") + e.what());
  }
  ++counts_.steps;
}

void CacheFuzzer::CheckTouched() {
  if (options_.exclusive && cache_->NumSequences() != int64_t(model_.size())) {
    Fail("the cache holds " + std::to_string(cache_->NumSequences()) + " sequences, the model " +
         std::to_string(model_.size()));
  }
  std::vector<SeqId> ids = touched_;
  if (counts_.steps % 16 == 0) {
    for (const auto& entry : model_) ids.push_back(entry.first);
  }
  for (SeqId id : ids) {
    const auto it = model_.find(id);
    if (it == model_.end()) {
      if (cache_->Contains(id)) Fail("sequence " + std::to_string(id) + " should not exist");
      continue;
    }
    try {
      CheckSequence(*cache_, id, it->second);
    } catch (const std::logic_error& e) {
      Fail(e.what());
    }
  }
}

void CacheFuzzer::AddSequence(bool with_logits) {
  if (int64_t(model_.size()) >= kMaxSequences) return Free();
  std::string ns;
  std::vector<int32_t> prompt;
  if (!recent_prompts_.empty() && (with_logits ? !OneIn(3) : OneIn(3))) {  // whole-prompt hits
    std::tie(ns, prompt) = recent_prompts_[size_t(Uniform(0, int64_t(recent_prompts_.size()) - 1))];
  } else {
    ns = OneIn(3) ? "tenant" : "";
    prompt = prefixes_[size_t(Uniform(0, int64_t(prefixes_.size()) - 1))];
    const std::vector<int32_t> suffix = RandomTokens(Uniform(1, 2 * config_.block_size));
    prompt.insert(prompt.end(), suffix.begin(), suffix.end());
  }
  const int64_t n = int64_t(prompt.size());
  const int32_t priority = int32_t(Uniform(0, 3));
  Expect expect = Expect::kSuccess;
  SeqId id = NewId();
  if (!model_.empty() && OneIn(25)) {
    id = Pick(0);
    expect = Expect::kInvalidArgument;
  }
  touched_.push_back(id);
  const bool may_run_out = !options_.exclusive || !cache_->CanAllocate(n);
  int64_t reused = 0;
  std::vector<float> logits;
  const bool ok = Attempt(with_logits ? "add_sequence_with_logits" : "add_sequence", expect,
                          may_run_out, [&] {
                            reused = with_logits ? cache_->AddSequenceWithLogits(
                                                       id, prompt.data(), n, ns, priority, &logits)
                                                 : cache_->AddSequence(id, prompt.data(), n, ns,
                                                                       priority);
                          });
  if (!ok) return;
  const int32_t bs = config_.block_size;
  if (!logits.empty()) {
    if (!with_logits || reused != n || config_.max_prompt_logits == 0) {
      Fail("logits returned with " + std::to_string(reused) + " of " + std::to_string(n) +
           " tokens reused");
    }
    if (logits != PromptLogitsFor(ns, prompt, kVocabSize)) Fail("wrong stored logits");
    ++counts_.whole_prompt_hits;
  } else if (reused % bs != 0 || reused >= n || reused < 0 ||
             (!config_.enable_prefix_caching && reused != 0)) {
    Fail("reused " + std::to_string(reused) + " of " + std::to_string(n) + " tokens");
  }
  counts_.prefix_hit_tokens += reused;
  model_[id] = ModelSequence{prompt, ns, false, reused, reused};
  if (recent_prompts_.size() < 16) {
    recent_prompts_.emplace_back(ns, prompt);
  } else {
    recent_prompts_[size_t(Uniform(0, 15))] = {ns, prompt};
  }
}

void CacheFuzzer::Append() {
  Expect expect = Expect::kSuccess;
  SeqId id = Pick(1);
  if (OneIn(20) && Pick(2) >= 0) {
    id = Pick(2);
    expect = Expect::kInvalidState;
  } else if (OneIn(30) || id < 0) {
    id = UnknownId();
    expect = Expect::kUnknown;
  } else if (int64_t(model_[id].tokens.size()) >=
             kMaxBlocksPerSequence * config_.block_size) {
    return Free();
  }
  touched_.push_back(id);
  std::vector<int32_t> tokens = RandomTokens(Uniform(0, 2 * config_.block_size));
  if (!tokens.empty() && OneIn(40)) {
    tokens.back() = -1;
    expect = Expect::kInvalidArgument;  // checked before the sequence
  }
  const int64_t n = int64_t(tokens.size());
  const bool may_run_out =
      !options_.exclusive || (expect == Expect::kSuccess && !cache_->CanAppend(id, n));
  if (Attempt("append_tokens", expect, may_run_out,
              [&] { cache_->AppendTokens(id, tokens.data(), n); })) {
    std::vector<int32_t>& seq_tokens = model_[id].tokens;
    seq_tokens.insert(seq_tokens.end(), tokens.begin(), tokens.end());
  }
}

void CacheFuzzer::WriteRange(SeqId id, int64_t end) {
  ModelSequence& seq = model_[id];
  const int64_t start = seq.written;
  if (end <= start) return;
  std::vector<int32_t> slots;
  Attempt("slot_mapping", Expect::kSuccess, false,
          [&] { slots = cache_->SlotMapping(id, start, end); });
  std::vector<float> k, v;
  std::vector<uint16_t> k16, v16;
  for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
    ExpectedKv(config_, seq.tokens, start, end, layer, &k, &v);
    const void* k_src = k.data();
    const void* v_src = v.data();
    DType src_dtype = DType::kFloat32;
    // Already in the storage dtype; quantized storage takes float16 too (the values are small
    // integers: exact in float16).
    if (config_.dtype != DType::kFloat32 && OneIn(2)) {
      src_dtype = IsQuantized(config_.dtype) ? DType::kFloat16 : config_.dtype;
      k16.resize(k.size());
      v16.resize(v.size());
      ConvertFromFloat32(k.data(), src_dtype, k16.data(), int64_t(k.size()));
      ConvertFromFloat32(v.data(), src_dtype, v16.data(), int64_t(v.size()));
      k_src = k16.data();
      v_src = v16.data();
    }
    Attempt("write_kv", Expect::kSuccess, false, [&] {
      cache_->WriteKv(layer, slots.data(), end - start, k_src, v_src, src_dtype);
    });
  }
  seq.written = end;
}

void CacheFuzzer::DecodeStep() {
  std::vector<SeqId> ids;
  for (const auto& [id, seq] : model_) {
    if (!seq.swapped &&
        int64_t(seq.tokens.size()) < kMaxBlocksPerSequence * config_.block_size) {
      ids.push_back(id);
    }
  }
  if (ids.empty()) return AddSequence(false);
  std::shuffle(ids.begin(), ids.end(), rng_);
  ids.resize(size_t(Uniform(1, std::min<int64_t>(4, int64_t(ids.size())))));
  touched_ = ids;
  // The step's forward pass wrote the K/V of every pending token first.
  for (SeqId id : ids) WriteRange(id, int64_t(model_[id].tokens.size()));
  const int64_t k = int64_t(ids.size());
  const bool may_run_out = !options_.exclusive || !cache_->CanAllocate(k * config_.block_size);
  Expect expect = Expect::kSuccess;
  if (OneIn(25)) {
    ids.push_back(ids[0]);
    expect = Expect::kInvalidArgument;
  } else if (OneIn(25) && Pick(2) >= 0) {
    ids.push_back(Pick(2));
    expect = Expect::kInvalidState;
  }
  const std::vector<int32_t> tokens = RandomTokens(int64_t(ids.size()));
  if (!Attempt("append_batch", expect, may_run_out,
               [&] { cache_->AppendBatch(ids.data(), tokens.data(), int64_t(ids.size())); })) {
    return;
  }
  for (int64_t i = 0; i < k; ++i) {
    ModelSequence& seq = model_[ids[size_t(i)]];
    seq.computed = std::max(seq.computed, int64_t(seq.tokens.size()));
    seq.tokens.push_back(tokens[size_t(i)]);
  }
}

void CacheFuzzer::Metadata() {
  std::vector<SeqId> ids;
  const int64_t k = Uniform(1, 4);
  for (int64_t i = 0; i < k; ++i) {
    const SeqId id = Pick(1);
    if (id < 0) return;
    ids.push_back(id);  // repeats allowed
  }
  Expect expect = Expect::kSuccess;
  if (OneIn(20) && Pick(2) >= 0) {
    ids.push_back(Pick(2));
    expect = Expect::kInvalidState;
  } else if (OneIn(20)) {
    ids.push_back(UnknownId());
    expect = Expect::kUnknown;
  }
  touched_ = ids;
  BatchMetadata m;
  if (!Attempt("build_batch_metadata", expect, false,
               [&] { m = cache_->BuildBatchMetadata(ids.data(), int64_t(ids.size())); })) {
    return;
  }
  const int32_t bs = config_.block_size;
  if (m.batch_size != k || m.indptr.size() != size_t(k + 1) || m.indptr[0] != 0) {
    Fail("batch metadata shape");
  }
  for (int64_t i = 0; i < k; ++i) {
    const SeqId id = ids[size_t(i)];
    const int32_t n = int32_t(model_[id].tokens.size());
    const std::vector<BlockId> table = cache_->BlockTable(id);
    const int32_t blocks = int32_t(table.size());
    bool good = m.context_lens[size_t(i)] == n && m.indptr[size_t(i + 1)] - m.indptr[size_t(i)] == blocks &&
                std::equal(table.begin(), table.end(), m.indices.begin() + m.indptr[size_t(i)]) &&
                std::equal(table.begin(), table.end(), m.block_tables.begin() + i * m.max_blocks) &&
                m.last_block_len[size_t(i)] == n - (blocks - 1) * bs &&
                m.slot_mapping[size_t(i)] == cache_->SlotMapping(id, n - 1, n)[0];
    for (int64_t j = blocks; j < m.max_blocks; ++j) {
      good = good && m.block_tables[size_t(i * m.max_blocks + j)] == kNullBlock;
    }
    if (!good) Fail("batch metadata of row " + std::to_string(i) + " (sequence " + std::to_string(id) + ")");
  }
}

void CacheFuzzer::Fork() {
  if (int64_t(model_.size()) >= kMaxSequences) return Free();
  Expect expect = Expect::kSuccess;
  SeqId parent = Pick(1);
  SeqId child = NewId();
  if (OneIn(20) && Pick(2) >= 0) {
    parent = Pick(2);
    expect = Expect::kInvalidState;
  } else if (parent < 0 || OneIn(30)) {
    parent = UnknownId();
    expect = Expect::kUnknown;
  } else if (OneIn(25)) {
    child = Pick(0);
    expect = Expect::kInvalidArgument;
  }
  // Half the forks take a prefix of the parent (fork(num_tokens=)), 1 in 25 of those a bad count.
  const bool prefix = expect == Expect::kSuccess && OneIn(2);
  int64_t num_tokens = prefix ? Uniform(1, int64_t(model_[parent].tokens.size())) : 0;
  if (prefix && OneIn(25)) {
    num_tokens = OneIn(2) ? 0 : int64_t(model_[parent].tokens.size()) + 1;
    expect = Expect::kInvalidArgument;
  }
  touched_ = {parent, child};
  if (Attempt("fork", expect, false, [&] {
        if (prefix) {
          cache_->Fork(parent, child, num_tokens);
        } else {
          cache_->Fork(parent, child);
        }
      })) {
    ModelSequence forked = model_[parent];
    if (prefix) {
      forked.tokens.resize(size_t(num_tokens));
      forked.computed = std::min(forked.computed, num_tokens);
      forked.written = std::min(forked.written, num_tokens);
    }
    model_[child] = std::move(forked);
  }
}

void CacheFuzzer::Free() {
  Expect expect = Expect::kSuccess;
  SeqId id = Pick(0);
  if (id < 0 || OneIn(30)) {
    id = UnknownId();
    expect = Expect::kUnknown;
  }
  // Half the time the request's computed count comes with it (free_sequence(num_computed=)).
  const bool with_count = expect == Expect::kSuccess && OneIn(2);
  int64_t count = 0;
  if (with_count && OneIn(20)) {
    count = int64_t(model_[id].tokens.size()) + 1;
    expect = Expect::kInvalidArgument;
  } else if (with_count) {
    count = Uniform(0, model_[id].written);  // only written K/V is ever marked computed
  }
  touched_.push_back(id);
  if (Attempt("free_sequence", expect, false, [&] {
        if (with_count) {
          cache_->FreeSequence(id, count);
        } else {
          cache_->FreeSequence(id);
        }
      })) {
    model_.erase(id);
  }
}

void CacheFuzzer::SwapOut() {
  Expect expect = Expect::kSuccess;
  SeqId id = Pick(1);
  if (OneIn(20) && Pick(2) >= 0) {
    id = Pick(2);
    expect = Expect::kInvalidState;
  } else if (id < 0 || OneIn(30)) {
    id = UnknownId();
    expect = Expect::kUnknown;
  } else if (config_.num_host_blocks == 0) {
    expect = Expect::kOutOfBlocks;  // no host tier
  }
  touched_.push_back(id);
  const bool may_run_out =
      !options_.exclusive ||
      (expect == Expect::kSuccess &&
       cache_->Stats().free_host_blocks < int64_t(cache_->BlockTable(id).size()));
  if (Attempt("swap_out", expect, may_run_out, [&] { cache_->SwapOut(id); })) {
    model_[id].swapped = true;
  }
}

void CacheFuzzer::SwapIn() {
  Expect expect = Expect::kSuccess;
  SeqId id = Pick(2);
  if (id < 0 || OneIn(20)) {
    id = Pick(1);
    expect = Expect::kInvalidState;
  }
  if (id < 0 || OneIn(30)) {
    id = UnknownId();
    expect = Expect::kUnknown;
  }
  touched_.push_back(id);
  const bool may_run_out =
      !options_.exclusive ||
      (expect == Expect::kSuccess && !cache_->CanAllocate(cache_->NumTokens(id)));
  if (Attempt("swap_in", expect, may_run_out, [&] { cache_->SwapIn(id); })) {
    model_[id].swapped = false;
  }
}

void CacheFuzzer::WriteKv() {
  if (OneIn(20) && Pick(2) >= 0) {  // a swapped-out sequence has no device slots
    const SeqId id = Pick(2);
    touched_.push_back(id);
    Attempt("slot_mapping", Expect::kInvalidState, false,
            [&] { cache_->SlotMapping(id, 0, 1); });
    return;
  }
  std::vector<SeqId> ids;
  for (const auto& [id, seq] : model_) {
    if (!seq.swapped && seq.written < int64_t(seq.tokens.size())) ids.push_back(id);
  }
  if (ids.empty()) return DecodeStep();
  const SeqId id = ids[size_t(Uniform(0, int64_t(ids.size()) - 1))];
  touched_.push_back(id);
  const ModelSequence& seq = model_[id];
  WriteRange(id, Uniform(seq.written + 1, int64_t(seq.tokens.size())));
}

void CacheFuzzer::MarkComputed() {
  Expect expect = Expect::kSuccess;
  SeqId id = Pick(0);
  int64_t count = 0;
  if (id < 0 || OneIn(30)) {
    id = UnknownId();
    expect = Expect::kUnknown;
  } else if (OneIn(20)) {
    count = int64_t(model_[id].tokens.size()) + 1;
    expect = Expect::kInvalidArgument;
  } else {
    count = Uniform(0, model_[id].written);  // only written K/V is ever marked computed
  }
  touched_.push_back(id);
  if (Attempt("mark_computed", expect, false, [&] { cache_->MarkComputed(id, count); })) {
    model_[id].computed = std::max(model_[id].computed, count);
  }
}

void CacheFuzzer::MarkComputedBatch() {
  std::vector<SeqId> ids;
  std::vector<int64_t> counts;
  const int64_t k = Uniform(0, 4);
  for (int64_t i = 0; i < k; ++i) {
    const SeqId id = Pick(0);
    if (id < 0) break;
    ids.push_back(id);  // repeats allowed
    counts.push_back(Uniform(0, model_[id].written));
  }
  Expect expect = Expect::kSuccess;
  if (!ids.empty() && OneIn(20)) {
    counts.back() = -1;
    expect = Expect::kInvalidArgument;
  }
  touched_ = ids;
  if (!Attempt("mark_computed_batch", expect, false, [&] {
        cache_->MarkComputedBatch(ids.data(), counts.data(), int64_t(ids.size()));
      })) {
    return;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    model_[ids[i]].computed = std::max(model_[ids[i]].computed, counts[i]);
  }
}

void CacheFuzzer::StoreLogits() {
  SeqId id = Pick(OneIn(10) ? 2 : 1);
  if (id < 0) return AddSequence(true);
  touched_.push_back(id);
  ModelSequence& seq = model_[id];
  const int64_t n = int64_t(seq.tokens.size());
  if (!seq.swapped && seq.computed < n && !OneIn(4)) {  // the prefill finishes first
    WriteRange(id, n);
    if (Attempt("mark_computed", Expect::kSuccess, false, [&] { cache_->MarkComputed(id, n); })) {
      seq.computed = n;
    }
  }
  const Expect expect = config_.max_prompt_logits == 0 || seq.swapped || seq.computed != n
                            ? Expect::kInvalidState
                            : Expect::kSuccess;
  const bool may_run_out = !options_.exclusive || !cache_->CanAllocate(1);
  const std::vector<float> logits = PromptLogitsFor(seq.namespace_id, seq.tokens, kVocabSize);
  if (Attempt("store_logits", expect, may_run_out,
              [&] { cache_->StoreLogits(id, logits.data(), kVocabSize); })) {
    recent_prompts_.emplace_back(seq.namespace_id, seq.tokens);
    if (recent_prompts_.size() > 16) recent_prompts_.erase(recent_prompts_.begin());
  }
}

void CacheFuzzer::ResetPrefixCache() {
  Attempt("reset_prefix_cache", Expect::kSuccess, false, [&] { cache_->ResetPrefixCache(); });
}

void CacheFuzzer::DrainEvents() {
  std::vector<CacheEvent> events;
  Attempt("drain_events", Expect::kSuccess, false, [&] { events = cache_->DrainEvents(); });
  if (!config_.enable_kv_events && !events.empty()) Fail("events without enable_kv_events");
  for (const CacheEvent& e : events) {
    const bool cleared = e.kind == CacheEvent::Kind::kAllCleared;
    if (cleared != (e.block == kNullBlock) || e.block >= config_.num_blocks) {
      Fail("event names block " + std::to_string(e.block));
    }
  }
}

FuzzCounts RunFuzz(const FuzzRunOptions& options) {
  FuzzCounts total;
  std::mt19937_64 rng(options.seed);
  for (int64_t done = 0; done < options.ops;) {
    const CacheConfig config = CacheFuzzer::RandomConfig(rng);
    PagedKvCache cache(config);
    CacheFuzzer fuzzer(&cache, 0, rng(), CacheFuzzer::Options{true, options.sweep_faults});
    const int64_t steps = std::min(options.ops_per_config, options.ops - done);
    int64_t i = 0;
    try {
      for (; i < steps; ++i) fuzzer.Step();
    } catch (const GuaranteeViolation& e) {
      auto& violation = total.violations[e.operation];
      if (violation.first++ == 0) violation.second = e.what();
      ++i;  // the step that failed counts
    }
    total.Add(fuzzer.counts());
    const CacheStats stats = cache.Stats();
    total.evictions += stats.evictions;
    total.cow_copies += stats.cow_copies;
    total.swap_ins += stats.swap_ins;
    done += i;
  }
  return total;
}

}  // namespace ferrum_kv::fuzz
