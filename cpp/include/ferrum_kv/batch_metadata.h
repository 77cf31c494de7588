// BatchMetadata: the per-step arrays attention kernels consume, for a batch of B sequences.
//
//   block_tables   [B * max_blocks] row-major [B, max_blocks]; row i holds sequence i's block
//                  ids, padded with -1 (kNullBlock)
//   context_lens   [B]      tokens of sequence i (>= 1)
//   indptr         [B + 1]  CSR row pointers: indptr[0] = 0, indptr[i+1] - indptr[i] = blocks of i
//   indices        [nnz]    CSR block ids, sequence after sequence (nnz = indptr[B])
//   last_block_len [B]      tokens in sequence i's last block, in (0, block_size]
//   slot_mapping   [B]      slot of sequence i's last token (block_id * block_size + offset):
//                           where a decode step writes the K/V of the token it just appended
//   num_computed   [B]      leading tokens of sequence i whose K/V is written (mark_computed),
//                           in [0, context_lens[i]]
// All arrays are int32. See docs/layout.md.
#pragma once

#include <cstdint>
#include <vector>

namespace ferrum_kv {

struct BatchMetadata {
  int64_t batch_size = 0;
  int64_t max_blocks = 0;
  std::vector<int32_t> block_tables;
  std::vector<int32_t> context_lens;
  std::vector<int32_t> indptr;
  std::vector<int32_t> indices;
  std::vector<int32_t> last_block_len;
  std::vector<int32_t> slot_mapping;
  std::vector<int32_t> num_computed;
};

}  // namespace ferrum_kv
