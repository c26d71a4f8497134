// The elementwise kernels of a layer and the token picks
// (transformer_ops.h), as a header: transformer_ops.cu launches them on a
// stream, and the CUDA tests also run them on the host through the emulator
// (tests/cuda_emu), where each includer gets its own copy (an unnamed
// namespace).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/transformer_ops.h"

namespace attnserve {
namespace {

constexpr int kThreads = 256;

unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void EmbedKernel(const uint16_t* table, const int32_t* tokens, int64_t n, int32_t hidden, float* x) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t r = i / hidden, c = i % hidden;
  x[i] = Bf16ToFloat(table[static_cast<int64_t>(tokens[r]) * hidden + c]);
}

__device__ __forceinline__ void RotatePair(const RopeAngles& rope, int32_t pos, int pair, float x0, float x1,
                                           float* out) {
  float c, s;
  RopeCosSin(rope, pos, pair, &c, &s);
  out[0] = x0 * c - x1 * s;
  out[1] = x1 * c + x0 * s;
}

// Thread per adjacent pair of one row's q | k | v.
__global__ void QkvSplitRopeKernel(QkvSplitArgs a) {
  const int32_t q_dim = a.n_heads * a.head_dim, kv_dim = a.n_kv_heads * a.head_dim;
  const int32_t width = q_dim + 2 * kv_dim;
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 2;
  if (i >= a.rows * width) return;
  const int64_t r = i / width;
  const int32_t c = static_cast<int32_t>(i % width);
  const float x0 = a.qkv[i], x1 = a.qkv[i + 1];
  const int32_t in_head = c % a.head_dim;
  const bool turns = in_head < a.rotary_dim && c < q_dim + kv_dim;
  float* out;
  if (c < q_dim) {
    out = a.q + r * q_dim + c;
    if (a.slots != nullptr) {
      float* sink = a.sink_q + r * q_dim + c;
      if (turns) {
        RotatePair(a.rope, a.slots[r], in_head / 2, x0, x1, sink);
      } else {
        sink[0] = x0, sink[1] = x1;
      }
    }
  } else if (c < q_dim + kv_dim) {
    out = a.k + r * kv_dim + (c - q_dim);
  } else {
    out = a.v + r * kv_dim + (c - q_dim - kv_dim);
  }
  if (turns) {
    RotatePair(a.rope, a.positions[r], in_head / 2, x0, x1, out);
  } else {
    out[0] = x0, out[1] = x1;
  }
}

__global__ void SwiGluKernel(const float* gate_up, int64_t n, int32_t ffn, uint16_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t r = i / ffn, c = i % ffn;
  const float* row = gate_up + r * 2 * ffn;
  out[i] = FloatToBf16(Silu(row[c]) * row[ffn + c]);
}

__global__ void ToBf16Kernel(const float* in, int64_t n, uint16_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = FloatToBf16(in[i]);
}

__global__ void GatherRowsKernel(const float* x, const int32_t* rows, int64_t n, int32_t width, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = x[static_cast<int64_t>(rows[i / width]) * width + i % width];
}

__global__ void FillRandomBf16Kernel(uint16_t* out, int64_t n, uint64_t seed, float scale) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  // splitmix64 of (seed, i): independent values without per-thread state.
  uint64_t z = seed + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
  out[i] = FloatToBf16((2.0f * u - 1.0f) * scale);
}

constexpr int kPickThreads = 512;

// Block per row. The largest value first (each thread its first largest,
// then a tree merge preferring the larger value, then the lower id), then,
// at temperature > 0, the cuts by bisection and the draw in id order.
// The block's first (value, id) in PickBefore's order, -1 for none: each
// thread brings its own; *value (if given) gets the winner's value.
__device__ int32_t BlockFirst(float v, int32_t id, float* scratch, int32_t* ids, float* value) {
  scratch[threadIdx.x] = v;
  ids[threadIdx.x] = id;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const int32_t oi = ids[threadIdx.x + stride], mi = ids[threadIdx.x];
      if (oi >= 0 && (mi < 0 || PickBefore(scratch[threadIdx.x + stride], oi, scratch[threadIdx.x], mi))) {
        scratch[threadIdx.x] = scratch[threadIdx.x + stride];
        ids[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  const int32_t best = ids[0];
  if (value != nullptr) *value = scratch[0];
  __syncthreads();  // scratch is free again
  return best;
}

// The row's log-softmax denominator and its top_logprobs most likely
// tokens (pass k takes the first in PickBefore's order after pass k - 1's),
// into *r. Every thread calls it.
__device__ void TopLogprobs(const float* row, int32_t vocab, float max, float* scratch, int32_t* ids, TokenPick* r,
                            float* log_sum) {
  float e = 0.0f;
  for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) e += row[i] > -INFINITY ? expf(row[i] - max) : 0.0f;
  const float sum = BlockTreeSum(e, scratch);
  // Thread 0 writes what only it reads (after the barriers below).
  if (threadIdx.x == 0) {
    *log_sum = logf(sum);
    r->n_top = 0;
  }
  const int top = min(r->top_logprobs, kMaxPickTop);
  for (int k = 0; k < top; ++k) {
    const int32_t prev = k > 0 ? r->top_tokens[k - 1] : -1;
    const float prev_v = prev >= 0 ? row[prev] : 0.0f;
    float v = 0.0f;
    int32_t id = -1;
    for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      if (!(row[i] > -INFINITY) || (prev >= 0 && !PickBefore(prev_v, prev, row[i], i))) continue;
      if (id < 0 || PickBefore(row[i], i, v, id)) {
        v = row[i];
        id = i;
      }
    }
    const int32_t best = BlockFirst(v, id, scratch, ids, nullptr);
    if (best < 0) break;  // block-uniform
    if (threadIdx.x == 0) {
      r->top_tokens[k] = best;
      r->top_logprob_values[k] = (row[best] - max) - *log_sum;
      r->n_top = k + 1;
    }
    __syncthreads();
  }
}

__global__ void PickTokensKernel(float* logits, int32_t vocab, const TokenPick* picks, TokenPick* results) {
  __shared__ float scratch[kPickThreads];
  __shared__ int32_t ids[kPickThreads];
  __shared__ TokenPick r;
  __shared__ float log_sum;
  float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const TokenPick p = picks[blockIdx.x];
  if (threadIdx.x == 0) r = p;
  for (int32_t e = threadIdx.x; e < p.n_edits; e += blockDim.x) {
    const LogitEdit& edit = p.edits[e];
    if (edit.token >= 0 && edit.token < vocab) row[edit.token] = EditLogit(row[edit.token], edit);
  }
  __syncthreads();
  float v = -INFINITY;
  int32_t id = -1;
  for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (row[i] > v || (id < 0 && row[i] == v)) {
      v = row[i];
      id = i;
    }
  }
  float max;
  const int32_t first = BlockFirst(v, id, scratch, ids, &max);
  const int32_t largest = first < 0 ? 0 : first;
  if (p.logprobs) TopLogprobs(row, vocab, max, scratch, ids, &r, &log_sum);
  // Thread 0 writes the result once the token is known.
  auto finish = [&](int32_t token) {
    r.token = token;
    if (p.logprobs) r.logprob = (row[token] - max) - log_sum;
    results[blockIdx.x] = r;
  };
  if (p.temperature <= 0.0f || !isfinite(max)) {
    if (threadIdx.x == 0) finish(largest);
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  auto count_from = [&](float cut) {
    float n = 0.0f;
    for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) n += ScaledLogit(row[i], max, inv_t) >= cut ? 1.0f : 0.0f;
    return BlockTreeSum(n, scratch);
  };
  auto mass_from = [&](float cut) {
    float m = 0.0f;
    for (int32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float x = ScaledLogit(row[i], max, inv_t);
      m += x >= cut ? PickWeight(x) : 0.0f;
    }
    return BlockTreeSum(m, scratch);
  };
  const float cut = PickCut(p, vocab, count_from, mass_from);
  // The draw: each thread's contiguous chunk of ids, chunks in order.
  const int32_t chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int32_t begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
  float mine = 0.0f;
  for (int32_t i = begin; i < end; ++i) {
    const float x = ScaledLogit(row[i], max, inv_t);
    mine += x >= cut ? PickWeight(x) : 0.0f;
  }
  scratch[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x != 0) return;
  float total = 0.0f;
  for (int t = 0; t < static_cast<int>(blockDim.x); ++t) total += scratch[t];
  const float target = static_cast<float>(p.uniform) * total;
  float acc = 0.0f;
  int32_t last = -1;
  for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
    if (scratch[t] == 0.0f) continue;
    if (acc + scratch[t] <= target) {
      acc += scratch[t];
      continue;
    }
    for (int32_t i = t * chunk; i < min(vocab, (t + 1) * chunk); ++i) {
      const float x = ScaledLogit(row[i], max, inv_t);
      if (!(x >= cut)) continue;
      acc += PickWeight(x);
      last = i;
      if (acc > target) break;
    }
    break;
  }
  if (last < 0) {  // rounding left the target past every chunk: the last kept token
    for (int32_t i = vocab - 1; i >= 0 && last < 0; --i) {
      if (ScaledLogit(row[i], max, inv_t) >= cut) last = i;
    }
  }
  finish(last >= 0 ? last : largest);
}

// The public functions' checks and launches (EmbedRowsCuda's and so on),
// each launch through `launch(name, kernel, grid, block, shared_bytes,
// args...)`.
template <typename Launcher>
absl::Status RunEmbedRows(const uint16_t* table, const int32_t* tokens, int64_t rows, int32_t hidden, float* x,
                          const Launcher& launch) {
  if (rows < 0 || hidden < 1) {
    return absl::InvalidArgumentError(absl::StrCat("EmbedRowsCuda: rows=", rows, " hidden=", hidden));
  }
  if (rows == 0) return absl::OkStatus();
  const int64_t n = rows * hidden;
  return launch("EmbedKernel", EmbedKernel, dim3(Blocks(n)), dim3(kThreads), 0, table, tokens, n, hidden, x);
}

template <typename Launcher>
absl::Status RunQkvSplitRope(const QkvSplitArgs& a, const Launcher& launch) {
  if (a.rows < 0 || a.n_heads < 1 || a.n_kv_heads < 1 || a.head_dim < 2 || a.head_dim % 2 != 0 ||
      a.rotary_dim < 0 || a.rotary_dim > a.head_dim || a.rotary_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("QkvSplitRopeCuda: rows=", a.rows, " heads ", a.n_heads, "/",
                                                   a.n_kv_heads, " head_dim=", a.head_dim,
                                                   " rotary_dim=", a.rotary_dim));
  }
  if (a.slots != nullptr && a.sink_q == nullptr) {
    return absl::InvalidArgumentError("QkvSplitRopeCuda: slots without sink_q");
  }
  if (a.rows == 0) return absl::OkStatus();
  const int64_t pairs = a.rows * (static_cast<int64_t>(a.n_heads + 2 * a.n_kv_heads) * a.head_dim / 2);
  return launch("QkvSplitRopeKernel", QkvSplitRopeKernel, dim3(Blocks(pairs)), dim3(kThreads), 0, a);
}

template <typename Launcher>
absl::Status RunSwiGluBf16(const float* gate_up, int64_t rows, int32_t ffn, uint16_t* out, const Launcher& launch) {
  if (rows < 0 || ffn < 1) return absl::InvalidArgumentError(absl::StrCat("SwiGluBf16Cuda: rows=", rows, " ffn=", ffn));
  if (rows == 0) return absl::OkStatus();
  const int64_t n = rows * ffn;
  return launch("SwiGluKernel", SwiGluKernel, dim3(Blocks(n)), dim3(kThreads), 0, gate_up, n, ffn, out);
}

template <typename Launcher>
absl::Status RunToBf16(const float* in, int64_t n, uint16_t* out, const Launcher& launch) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("ToBf16Cuda: n=", n));
  if (n == 0) return absl::OkStatus();
  return launch("ToBf16Kernel", ToBf16Kernel, dim3(Blocks(n)), dim3(kThreads), 0, in, n, out);
}

template <typename Launcher>
absl::Status RunFillRandomBf16(uint16_t* out, int64_t n, uint64_t seed, float scale, const Launcher& launch) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("FillRandomBf16Cuda: n=", n));
  if (n == 0) return absl::OkStatus();
  return launch("FillRandomBf16Kernel", FillRandomBf16Kernel, dim3(Blocks(n)), dim3(kThreads), 0, out, n, seed, scale);
}

template <typename Launcher>
absl::Status RunPickTokens(float* logits, int64_t rows, int32_t vocab, const TokenPick* picks, TokenPick* results,
                           const Launcher& launch) {
  if (rows < 0 || rows > 2147483647 || vocab < 1) {
    return absl::InvalidArgumentError(absl::StrCat("PickTokensCuda: rows=", rows, " vocab=", vocab));
  }
  if (rows == 0) return absl::OkStatus();
  return launch("PickTokensKernel", PickTokensKernel, dim3(static_cast<unsigned>(rows)), dim3(kPickThreads), 0,
                logits, vocab, picks, results);
}

template <typename Launcher>
absl::Status RunGatherRows(const float* x, const int32_t* rows, int64_t n, int32_t width, float* out,
                           const Launcher& launch) {
  if (n < 0 || width < 1) return absl::InvalidArgumentError(absl::StrCat("GatherRowsCuda: n=", n, " width=", width));
  if (n == 0) return absl::OkStatus();
  const int64_t elements = n * width;
  return launch("GatherRowsKernel", GatherRowsKernel, dim3(Blocks(elements)), dim3(kThreads), 0, x, rows, elements,
                width, out);
}

}  // namespace
}  // namespace attnserve
