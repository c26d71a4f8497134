// Writes one layer's new keys and values into the paged fp16 KV cache on the
// GPU, as WriteKv (engine/kv) does on the CPU: each sequence's rows go to its
// blocks' slices (page tables or tables packed by head), and the key bounds
// of every block written to (Quest's elementwise min and max) are those of
// the keys in it from its first slot on. Asynchronous; nothing allocates.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/common/half.h"
#include "kernels/common/paged_kv.h"

namespace attnserve {

// Rows [row_begin, row_begin + n_tokens) of the step's K/V are positions
// [first_pos, first_pos + n_tokens) of this sequence. kv's pointers (device)
// name writable memory; blocks up to first_pos + n_tokens have slices.
struct KvAppendSequence {
  PagedKv kv;  // layer 0's view: the launch's layer is written (PagedKv::AtLayer)
  int32_t first_pos = 0;
  int32_t row_begin = 0;
  int32_t n_tokens = 0;
};

struct KvAppendArgs {
  const KvAppendSequence* seqs = nullptr;  // device, [n_seqs]
  int32_t n_seqs = 0;
  int32_t layer = 0;
  const int32_t* row_seq = nullptr;        // device, [n_rows]: the sequence of each row
  int32_t n_rows = 0;
  int32_t max_blocks_per_seq = 0;          // >= the blocks any sequence writes to this step
  const float* k = nullptr;                // device, [n_rows][n_kv_heads * head_dim]
  const float* v = nullptr;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
};

absl::Status AppendKvCuda(const KvAppendArgs& args, void* stream);

// Blocks that positions [first_pos, first_pos + n_tokens) touch.
ATTN_HD int32_t BlocksTouched(int32_t first_pos, int32_t n_tokens, int32_t page_size) {
  return n_tokens <= 0 ? 0 : (first_pos + n_tokens - 1) / page_size - first_pos / page_size + 1;
}

}  // namespace attnserve
