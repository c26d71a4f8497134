// ACT's column sums kernel (column_mass.h), as a header: column_mass.cu
// launches it on a stream, and the CUDA tests also run it on the host
// through the emulator (tests/cuda_emu), where each includer gets its own
// copy (an unnamed namespace).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/attention_hooks.h"
#include "kernels/cuda/column_mass.h"
#include "kernels/cuda/device.h"

namespace attnserve {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 128;

// Block (query, query head, key tile), thread per key: queries on the
// grid's x, which has room for any prompt.
__global__ void ColumnMassKernel(ColumnMassArgs a) {
  __shared__ float q[kMaxHeadDim], sink_q[kMaxHeadDim];
  const int32_t i = blockIdx.x;
  const int h = blockIdx.y;
  const DecodeSequence s = AtLayer(a.seqs[i], a.layer);
  if (static_cast<int32_t>(blockIdx.z * blockDim.x) > s.query_pos) return;  // keys after the query: none visible
  const int g = h / (a.n_q_heads / a.n_kv_heads);
  const int64_t row = static_cast<int64_t>(QueryRow(s, i)) * a.n_q_heads + h;
  for (int c = threadIdx.x; c < a.head_dim; c += blockDim.x) {
    q[c] = a.q[row * a.head_dim + c];
    sink_q[c] = a.sink_q != nullptr ? a.sink_q[row * a.head_dim + c] : q[c];
  }
  __syncthreads();
  const int32_t j = blockIdx.z * blockDim.x + threadIdx.x;
  const float lse = a.lse[row];
  const AttentionHeadParams& hp = s.params.heads[h];
  if (j >= a.n_keys || lse == -INFINITY || !HeadKeyVisible(s.params, hp, s.query_pos, j)) return;
  const fp16_t* k = s.kv.Row(s.kv.keys, g, j);
  const float* qv = j < s.params.sink_tokens ? sink_q : q;
  float dot = 0.0f;
  for (int c = 0; c < a.head_dim; ++c) dot = fmaf(qv[c], Fp16ToFloat(k[c]), dot);
  const float logit = dot * hp.logit_scale + KeyBias(s.params, hp, j);
  atomicAdd(&a.mass[static_cast<int64_t>(h) * a.n_keys + j], static_cast<double>(__expf(logit - lse)));
}

// ColumnMassCuda's checks and launch, through
// `launch(name, kernel, grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunColumnMass(const ColumnMassArgs& a, const Launcher& launch) {
  if (a.n_queries < 0 || a.n_keys < 0 || a.n_kv_heads < 1 || a.n_q_heads % a.n_kv_heads != 0 || a.head_dim < 1 ||
      a.head_dim > kMaxHeadDim || a.n_q_heads > 65535 || a.n_keys > 65535 * kThreads) {
    return absl::InvalidArgumentError(absl::StrCat("ColumnMassCuda: queries=", a.n_queries, " keys=", a.n_keys,
                                                   " heads ", a.n_q_heads, "/", a.n_kv_heads,
                                                   " head_dim=", a.head_dim));
  }
  if (a.n_queries == 0 || a.n_keys == 0) return absl::OkStatus();
  if (a.seqs == nullptr || a.q == nullptr || a.lse == nullptr || a.mass == nullptr) {
    return absl::InvalidArgumentError("ColumnMassCuda: null pointer");
  }
  const dim3 grid(a.n_queries, a.n_q_heads, (a.n_keys + kThreads - 1) / kThreads);
  return launch("ColumnMassKernel", ColumnMassKernel, grid, dim3(kThreads), 0, a);
}

}  // namespace
}  // namespace attnserve
