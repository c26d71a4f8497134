// The KV append kernels (kv_append.h), as a header: kv_append.cu launches
// them on a stream, and the CUDA tests also run them on the host through
// the emulator (tests/cuda_emu), where each includer gets its own copy (an
// unnamed namespace).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_append.h"

namespace attnserve {
namespace {

// Block per row, thread per (KV head, column).
__global__ void AppendRowsKernel(KvAppendArgs a) {
  const int row = blockIdx.x;
  const KvAppendSequence& s = a.seqs[a.row_seq[row]];
  const PagedKv kv = s.kv.AtLayer(a.layer);
  const int32_t t = s.first_pos + (row - s.row_begin);
  const int width = a.n_kv_heads * a.head_dim;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const int g = i / a.head_dim, c = i % a.head_dim;
    const int64_t at = (kv.Row(kv.keys, g, t) - kv.keys) + c;
    // The view is read-only; the memory it names is the cache's.
    const_cast<fp16_t*>(kv.keys)[at] = FloatToFp16(a.k[static_cast<int64_t>(row) * width + i]);
    const_cast<fp16_t*>(kv.values)[at] = FloatToFp16(a.v[static_cast<int64_t>(row) * width + i]);
  }
}

// Block per (sequence, touched block, KV head), thread per column: the
// block's bounds over its slots from the first to the last written.
__global__ void BlockBoundsKernel(KvAppendArgs a) {
  const KvAppendSequence& s = a.seqs[blockIdx.x];
  const PagedKv kv = s.kv.AtLayer(a.layer);
  const int32_t ps = kv.page_size;
  const int32_t block = s.first_pos / ps + static_cast<int32_t>(blockIdx.y);
  if (static_cast<int32_t>(blockIdx.y) >= BlocksTouched(s.first_pos, s.n_tokens, ps)) return;
  const int g = blockIdx.z;
  const int32_t end = min((block + 1) * ps, s.first_pos + s.n_tokens);
  const int64_t slice = kv.Slice(g, block);
  for (int c = threadIdx.x; c < a.head_dim; c += blockDim.x) {
    float lo = INFINITY, hi = -INFINITY;
    for (int32_t t = block * ps; t < end; ++t) {
      const float x = Fp16ToFloat(kv.Row(kv.keys, g, t)[c]);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    const_cast<fp16_t*>(kv.key_min)[slice * a.head_dim + c] = FloatToFp16(lo);
    const_cast<fp16_t*>(kv.key_max)[slice * a.head_dim + c] = FloatToFp16(hi);
  }
}

// AppendKvCuda's checks and launches, each launch through
// `launch(name, kernel, grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunAppendKv(const KvAppendArgs& a, const Launcher& launch) {
  if (a.n_rows < 0 || a.n_seqs < 0 || a.n_kv_heads < 1 || a.n_kv_heads > kMaxGridYZ || a.head_dim < 1 ||
      a.max_blocks_per_seq < 0 || a.max_blocks_per_seq > kMaxGridYZ) {
    return absl::InvalidArgumentError(absl::StrCat("AppendKvCuda: rows=", a.n_rows, " seqs=", a.n_seqs, " heads=",
                                                   a.n_kv_heads, " head_dim=", a.head_dim, " blocks per sequence ",
                                                   a.max_blocks_per_seq, " (at most ", kMaxGridYZ, ")"));
  }
  if (a.n_rows == 0) return absl::OkStatus();
  if (a.seqs == nullptr || a.row_seq == nullptr || a.k == nullptr || a.v == nullptr) {
    return absl::InvalidArgumentError("AppendKvCuda: null pointer");
  }
  const int width = a.n_kv_heads * a.head_dim;
  if (absl::Status st = launch("AppendRowsKernel", AppendRowsKernel, dim3(a.n_rows), dim3(width < 1024 ? width : 1024),
                               0, a);
      !st.ok()) {
    return st;
  }
  if (a.max_blocks_per_seq == 0) return absl::OkStatus();
  return launch("BlockBoundsKernel", BlockBoundsKernel, dim3(a.n_seqs, a.max_blocks_per_seq, a.n_kv_heads),
                dim3(a.head_dim < 1024 ? a.head_dim : 1024), 0, a);
}

}  // namespace
}  // namespace attnserve
