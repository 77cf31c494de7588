#include "hmac_sha256.h"

#include <algorithm>
#include <cstring>

#include "sha256.h"

namespace ferrum_kv {
namespace {

// SHA-256 over bytes fed in pieces: whole 64-byte blocks go straight to the compression function,
// the rest waits in a buffer.
class Sha256Stream {
 public:
  Sha256Stream() : compress_(sha256::BestCompress()) {}

  void Feed(const uint8_t* data, size_t len) {
    total_ += len;
    if (buffered_ > 0) {
      const size_t take = std::min(len, sha256::kBlockBytes - buffered_);
      std::memcpy(buffer_ + buffered_, data, take);
      buffered_ += take;
      data += take;
      len -= take;
      if (buffered_ < sha256::kBlockBytes) return;
      compress_(&state_, buffer_, 1);
      buffered_ = 0;
    }
    const size_t whole = len / sha256::kBlockBytes;
    compress_(&state_, data, whole);
    data += whole * sha256::kBlockBytes;
    len -= whole * sha256::kBlockBytes;
    std::memcpy(buffer_, data, len);
    buffered_ = len;
  }

  void Finish(uint8_t* digest) {
    uint8_t tail[2 * sha256::kBlockBytes];
    std::memcpy(tail, buffer_, buffered_);
    const size_t padded = sha256::PaddedSize(buffered_);
    sha256::WritePadding(tail + buffered_, buffered_);
    // WritePadding encodes the length of what it was given; the whole message's is total_.
    const uint64_t bits = uint64_t(total_) * 8;
    for (int i = 0; i < 8; ++i) tail[padded - 1 - i] = uint8_t(bits >> (8 * i));
    compress_(&state_, tail, padded / sha256::kBlockBytes);
    sha256::WriteDigest(state_, digest);
  }

 private:
  sha256::CompressFn compress_;
  sha256::State state_ = sha256::kInitialState;
  uint8_t buffer_[sha256::kBlockBytes];
  size_t buffered_ = 0;
  size_t total_ = 0;
};

}  // namespace

void HmacSha256(const std::string& key, const std::pair<const uint8_t*, size_t>* parts,
                size_t num_parts, uint8_t* mac) {
  uint8_t block_key[sha256::kBlockBytes] = {};
  if (key.size() > sha256::kBlockBytes) {
    sha256::Hash(reinterpret_cast<const uint8_t*>(key.data()), key.size(),
                 sha256::BestCompress(), block_key);
  } else {
    std::memcpy(block_key, key.data(), key.size());
  }
  uint8_t pad[sha256::kBlockBytes];
  for (size_t i = 0; i < sha256::kBlockBytes; ++i) pad[i] = block_key[i] ^ 0x36;
  Sha256Stream inner;
  inner.Feed(pad, sizeof pad);
  for (size_t i = 0; i < num_parts; ++i) inner.Feed(parts[i].first, parts[i].second);
  uint8_t inner_digest[sha256::kDigestBytes];
  inner.Finish(inner_digest);
  for (size_t i = 0; i < sha256::kBlockBytes; ++i) pad[i] = block_key[i] ^ 0x5c;
  Sha256Stream outer;
  outer.Feed(pad, sizeof pad);
  outer.Feed(inner_digest, sizeof inner_digest);
  outer.Finish(mac);
}

}  // namespace ferrum_kv
