// The linear mode's kernels (linear_state.h), as a header: linear_state.cu
// launches them on a stream, and the CUDA tests also run them on the host
// through the emulator (tests/cuda_emu), where each includer gets its own
// copy (an unnamed namespace).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
#include "kernels/common/taylor.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/linear_state.h"
#include "kernels/cuda/shared_memory.cuh"

namespace attnserve {
namespace {

constexpr int kThreads = 256;
constexpr int kFoldKeys = 8;
constexpr int kMaxHeadDim = 128;

// Thread per state element (feature f, column c; c == head_dim is z[f]) of
// one (sequence, KV head): adds φ_f(k_j) v_j[c] (or φ_f(k_j)) over the
// folded keys. Keys are converted once per block into shared memory.
__global__ void FoldKeysKernel(const LinearFoldSequence* seqs, int32_t n_kv_heads, int32_t head_dim) {
  __shared__ float keys[kFoldKeys][kMaxHeadDim];
  const LinearFoldSequence& s = seqs[blockIdx.z];
  const int g = blockIdx.y;
  const int features = TaylorFeatureCount(head_dim);
  const int64_t element = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int f = static_cast<int>(element / (head_dim + 1)), c = static_cast<int>(element % (head_dim + 1));
  const bool owns = f < features;
  const TaylorTerm term = TaylorTermOf(head_dim, owns ? f : 0);
  float* state = s.states + static_cast<int64_t>(g) * features * (head_dim + 1);
  float acc = 0.0f;
  // Keys in passes of kFoldKeys, folded in order: two barriers a pass, one
  // for a decode step's single key.
  for (int32_t j0 = s.fold_begin; j0 < s.fold_end; j0 += kFoldKeys) {
    const int n = min(kFoldKeys, s.fold_end - j0);
    if (j0 > s.fold_begin) __syncthreads();  // the last pass's keys are read
    for (int i = threadIdx.x; i < n * head_dim; i += blockDim.x) {
      keys[i / head_dim][i % head_dim] = Fp16ToFloat(s.kv.Row(s.kv.keys, g, j0 + i / head_dim)[i % head_dim]);
    }
    __syncthreads();
    if (!owns) continue;
    for (int k = 0; k < n; ++k) {
      const float phi = TaylorTermValue(keys[k], term);
      acc += c < head_dim ? phi * Fp16ToFloat(s.kv.Row(s.kv.values, g, j0 + k)[c]) : phi;
    }
  }
  if (!owns) return;
  if (c < head_dim) {
    state[static_cast<int64_t>(f) * head_dim + c] += acc;
  } else {
    state[static_cast<int64_t>(features) * head_dim + f] += acc;
  }
}

// Block per (query head, sequence), thread per column: φ(q) in shared
// memory, then num[c] = Σ_f φ_f(q) S[f][c] and den = Σ_f φ_f(q) z[f], plus
// the pending keys' Taylor weights.
__global__ void JoinLinearKernel(LinearReadArgs a) {
  float* phi = reinterpret_cast<float*>(DynamicShared());
  __shared__ float q[kMaxHeadDim];
  __shared__ float partial[kMaxHeadDim / 32];
  const int h = blockIdx.x, c = threadIdx.x;
  const LinearReadSequence& s = a.seqs[blockIdx.y];
  const int d = a.head_dim, features = TaylorFeatureCount(d);
  const int g = h / (a.n_q_heads / a.n_kv_heads);
  const int64_t row = static_cast<int64_t>(s.row) * a.n_q_heads + h;
  const float* state = s.states + static_cast<int64_t>(g) * features * (d + 1);
  q[c] = a.q[row * d + c] * s.heads[h].logit_scale;
  __syncthreads();
  for (int f = c; f < features; f += blockDim.x) phi[f] = TaylorFeature(q, d, f);
  __syncthreads();
  float num = 0.0f;
  for (int f = 0; f < features; ++f) num += phi[f] * state[static_cast<int64_t>(f) * d + c];
  float part = 0.0f;
  for (int f = c; f < features; f += blockDim.x) part += phi[f] * state[static_cast<int64_t>(features) * d + f];
  float den = BlockSum(part, partial);
  for (int32_t j = s.pending_begin; j < s.pending_end; ++j) {
    const float x = BlockSum(q[c] * Fp16ToFloat(s.kv.Row(s.kv.keys, g, j)[c]), partial);
    const float w = Taylor2(x);
    num += w * Fp16ToFloat(s.kv.Row(s.kv.values, g, j)[c]);
    den += w;
  }
  if (den <= 0.0f) return;  // nothing folded yet
  const float lse = a.lse[row];
  const float exact = lse == -INFINITY ? 0.0f : 1.0f / (1.0f + den * __expf(-lse));
  float& out = a.out[row * d + c];
  out = exact * out + (1.0f - exact) * num / den;
}

// FoldKeysCuda's checks and launches, each launch through
// `launch(name, kernel, grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunFoldKeys(const LinearFoldSequence* seqs, int32_t n_seqs, int32_t n_kv_heads, int32_t head_dim,
                         const Launcher& launch) {
  if (n_seqs < 0 || n_kv_heads < 1 || head_dim < 1 || head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("FoldKeysCuda: n_seqs=", n_seqs, " n_kv_heads=", n_kv_heads,
                                                   " head_dim=", head_dim, " (at most ", kMaxHeadDim, ")"));
  }
  if (n_seqs == 0) return absl::OkStatus();
  if (seqs == nullptr) return absl::InvalidArgumentError("FoldKeysCuda: null pointer");
  const int64_t elements = static_cast<int64_t>(LinearStateFloats(head_dim));
  for (int32_t i = 0; i < n_seqs; i += kMaxGridYZ) {
    const dim3 grid(static_cast<unsigned>((elements + kThreads - 1) / kThreads), n_kv_heads,
                    std::min(kMaxGridYZ, n_seqs - i));
    if (absl::Status st = launch("FoldKeysKernel", FoldKeysKernel, grid, dim3(kThreads), 0, seqs + i, n_kv_heads,
                                 head_dim);
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

// JoinLinearStateCuda's checks and launches, as RunFoldKeys'.
template <typename Launcher>
absl::Status RunJoinLinearState(const LinearReadArgs& a, const Launcher& launch) {
  // Whole warps of columns (the den reduction shuffles over full warps).
  if (a.n_seqs < 0 || a.n_kv_heads < 1 || a.n_q_heads % a.n_kv_heads != 0 || a.head_dim < 32 ||
      a.head_dim % 32 != 0 || a.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("JoinLinearStateCuda: n_seqs=", a.n_seqs, " heads ", a.n_q_heads,
                                                   "/", a.n_kv_heads, " head_dim=", a.head_dim));
  }
  if (a.n_seqs == 0) return absl::OkStatus();
  if (a.seqs == nullptr || a.q == nullptr || a.lse == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("JoinLinearStateCuda: null pointer");
  }
  // φ(q): 33 KB at head_dim 128, under the 48 KB a launch gets by default.
  const size_t shared = static_cast<size_t>(TaylorFeatureCount(a.head_dim)) * sizeof(float);
  for (int32_t i = 0; i < a.n_seqs; i += kMaxGridYZ) {
    LinearReadArgs chunk = a;
    chunk.seqs = a.seqs + i;  // each names its own row
    chunk.n_seqs = std::min(kMaxGridYZ, a.n_seqs - i);
    if (absl::Status st = launch("JoinLinearKernel", JoinLinearKernel, dim3(a.n_q_heads, chunk.n_seqs),
                                 dim3(a.head_dim), shared, chunk);
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace attnserve
