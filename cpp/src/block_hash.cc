#include "ferrum_kv/block_hash.h"

#include <algorithm>
#include <string>
#include <vector>

#include "ferrum_kv/support/check.h"
#include "sha256.h"

namespace ferrum_kv {
namespace {

// Token ids go into the message as their in-memory bytes.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "block hashes take token ids as little-endian uint32: needs a little-endian host");
static_assert(sizeof(BlockHash) == sha256::kDigestBytes);

constexpr char kDomain[] = "ferrum-kv/v1";

// The message of one chain link, padded once and then rewritten in place for every block:
//   [0, 32)                      parent digest
//   [32, 32 + 4 * block_size)    token ids, little-endian
//   [.., PaddedSize(..))         SHA-256 padding (the same for every block of the call)
// On the stack up to kInlineBytes (block_size <= 501), on the heap once per call beyond.
class LinkMessage {
 public:
  explicit LinkMessage(int32_t block_size)
      : token_bytes_(size_t(block_size) * sizeof(int32_t)),
        num_sha_blocks_(sha256::PaddedSize(sha256::kDigestBytes + token_bytes_) /
                        sha256::kBlockBytes) {
    if (num_sha_blocks_ * sha256::kBlockBytes > kInlineBytes) {
      heap_.resize(num_sha_blocks_ * sha256::kBlockBytes);
      data_ = heap_.data();
    }
    sha256::WritePadding(data_ + sha256::kDigestBytes + token_bytes_,
                         sha256::kDigestBytes + token_bytes_);
  }
  LinkMessage(const LinkMessage&) = delete;
  LinkMessage& operator=(const LinkMessage&) = delete;

  // *out = SHA-256(parent || tokens[0, block_size)).
  void Hash(sha256::CompressFn compress, const BlockHash& parent, const int32_t* tokens,
            BlockHash* out) {
    std::memcpy(data_, parent.data(), sha256::kDigestBytes);
    std::memcpy(data_ + sha256::kDigestBytes, tokens, token_bytes_);
    sha256::State state = sha256::kInitialState;
    compress(&state, data_, num_sha_blocks_);
    sha256::WriteDigest(state, out->data());
  }

 private:
  static constexpr size_t kInlineBytes = 2048;

  const size_t token_bytes_;
  const size_t num_sha_blocks_;
  alignas(64) uint8_t inline_[kInlineBytes];
  std::vector<uint8_t> heap_;
  uint8_t* data_ = inline_;
};

}  // namespace

BlockHash RootHash(const uint8_t* ns, size_t ns_len) {
  std::string message(kDomain);
  message.append(reinterpret_cast<const char*>(ns), ns_len);
  BlockHash root;
  sha256::Hash(reinterpret_cast<const uint8_t*>(message.data()), message.size(),
               sha256::BestCompress(), root.data());
  return root;
}

BlockHash HashBlock(const BlockHash& parent, const int32_t* tokens, int32_t block_size) {
  BlockHash hash;
  HashBlocks(parent, tokens, 1, block_size, &hash);
  return hash;
}

void HashBlocks(const BlockHash& parent, const int32_t* tokens, int64_t num_blocks,
                int32_t block_size, BlockHash* out) {
  FKV_CHECK_ARG(block_size >= 1, "block_size must be >= 1, got " << block_size);
  FKV_CHECK_ARG(num_blocks >= 0, "num_blocks must be >= 0, got " << num_blocks);
  CheckTokenIds(tokens, 0, num_blocks * block_size);
  if (num_blocks == 0) return;
  const sha256::CompressFn compress = sha256::BestCompress();
  LinkMessage message(block_size);
  message.Hash(compress, parent, tokens, &out[0]);
  for (int64_t i = 1; i < num_blocks; ++i) {
    message.Hash(compress, out[i - 1], tokens + i * block_size, &out[i]);
  }
}

void CheckTokenIds(const int32_t* tokens, int64_t begin, int64_t end) {
  int32_t min_token = 0;
  for (int64_t i = begin; i < end; ++i) min_token = std::min(min_token, tokens[i]);  // vectorised
  if (min_token >= 0) return;
  for (int64_t i = begin; i < end; ++i) {
    FKV_CHECK_ARG(tokens[i] >= 0,
                  "token ids must be >= 0, got tokens[" << i << "] = " << tokens[i]);
  }
}

const char* Sha256Implementation() { return sha256::BestCompressName(); }

}  // namespace ferrum_kv
