#include "kernels/cuda/paged_decode.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_warp.cuh"
#include "kernels/cuda/device.h"

namespace attnserve {
namespace {

constexpr int kMaxGroup = 16;  // query heads per KV head: one warp each

// Partial results of one split: [n_seqs][n_q_heads][n_splits] of
// {max, sum over S, sum over the rest} and of two head_dim accumulators.
struct Workspace {
  float* stats;  // [..][3]
  float* acc;    // [..][2][head_dim]
};

Workspace Carve(void* base, int32_t n_seqs, int32_t n_q_heads, int32_t n_splits) {
  auto* f = static_cast<float*>(base);
  const int64_t slots = static_cast<int64_t>(n_seqs) * n_q_heads * n_splits;
  return {f, f + slots * 3};
}

int32_t NumSplits(int32_t max_tokens) { return (max_tokens + kDecodeSplitKeys - 1) / kDecodeSplitKeys; }

// Key j is read for KV head g: the head's visible set and, under Quest, the
// head's selected ranges.
__device__ bool KeyRead(const DecodeSequence& s, const AttentionHeadParams& hp, int g, int32_t j) {
  if (!HeadKeyVisible(s.params, hp, s.query_pos, j)) return false;
  return s.key_ranges == nullptr ||
         InRanges(s.key_ranges + static_cast<int64_t>(g) * s.key_ranges_stride, s.num_key_ranges[g], j);
}

// Block (split, g, seq), one warp per query head of KV head g. Each lane
// scores one key of a 32-key tile, the warp updates the online softmax, then
// every lane accumulates its head_dim / 32 value columns over the tile.
template <int kHeadDim>
__global__ void DecodePartialKernel(DecodeAttentionArgs a, Workspace ws, int32_t n_splits) {
  constexpr int kCols = kHeadDim / kWarp;  // value columns per lane, as half2 pairs: kCols / 2
  const int split = blockIdx.x, g = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int group = a.n_q_heads / a.n_kv_heads;
  const DecodeSequence s = AtLayer(a.seqs[seq], a.layer);
  const int32_t begin = split * kDecodeSplitKeys;
  const int32_t end = min(s.query_pos + 1, begin + kDecodeSplitKeys);
  if (begin >= end) return;  // past this sequence's keys: the merge reads only its own splits

  __shared__ float q_sh[kMaxGroup][kHeadDim];
  __shared__ float sink_q_sh[kMaxGroup][kHeadDim];
  const int h = g * group + warp;
  const int64_t q_off = (static_cast<int64_t>(QueryRow(s, seq)) * a.n_q_heads + h) * kHeadDim;
  for (int c = lane; c < kHeadDim; c += kWarp) {
    q_sh[warp][c] = a.q[q_off + c];
    sink_q_sh[warp][c] = a.sink_q != nullptr ? a.sink_q[q_off + c] : a.q[q_off + c];
  }
  __syncwarp();

  const AttentionHeadParams& hp = s.params.heads[h];
  const bool reweights = hp.reweight_beta != 1.0f;
  WarpSoftmax<kCols> sm;
  for (int32_t t0 = begin; t0 < end; t0 += kWarp) {
    const int32_t j = t0 + lane;
    float logit = -INFINITY;
    bool in_set = false;
    if (j < end && KeyRead(s, hp, g, j)) {
      const float dot = DotHalf2<kHeadDim>(j < s.params.sink_tokens ? sink_q_sh[warp] : q_sh[warp],
                                           reinterpret_cast<const __half2*>(s.kv.Row(s.kv.keys, g, j)));
      logit = dot * hp.logit_scale + KeyBias(s.params, hp, j);
      in_set = reweights && InReweightSet(s.params, hp, j);
    }
    float p;
    if (!sm.AddTile(logit, in_set, &p)) continue;
    const int n = min(kWarp, end - t0);
    for (int kk = 0; kk < n; ++kk) {
      const float pk = __shfl_sync(0xffffffffu, p, kk);
      const bool set_k = __shfl_sync(0xffffffffu, in_set, kk);
      if (pk == 0.0f) continue;  // warp-uniform: pk is the same in every lane
      sm.AddValue(reinterpret_cast<const __half2*>(s.kv.Row(s.kv.values, g, t0 + kk)), lane, pk, set_k);
    }
  }
  const int64_t slot = (static_cast<int64_t>(seq) * a.n_q_heads + h) * n_splits + split;
  if (lane == 0) {
    ws.stats[slot * 3 + 0] = sm.m;
    ws.stats[slot * 3 + 1] = sm.sum_set;
    ws.stats[slot * 3 + 2] = sm.sum_rest;
  }
  float* out = ws.acc + slot * 2 * kHeadDim;
#pragma unroll
  for (int c = 0; c < kCols / 2; ++c) {
    const int col = 2 * (lane + c * kWarp);
    out[col] = sm.acc_set[2 * c];
    out[col + 1] = sm.acc_set[2 * c + 1];
    out[kHeadDim + col] = sm.acc_rest[2 * c];
    out[kHeadDim + col + 1] = sm.acc_rest[2 * c + 1];
  }
}

// Block (h, seq), one thread per column: merges the sequence's splits into
// one softmax, the virtual sink in its denominator, ACT's scales on top.
template <int kHeadDim>
__global__ void DecodeMergeKernel(DecodeAttentionArgs a, Workspace ws, int32_t n_splits) {
  const int h = blockIdx.x, seq = blockIdx.y, col = threadIdx.x;
  const DecodeSequence s = AtLayer(a.seqs[seq], a.layer);
  const AttentionHeadParams& hp = s.params.heads[h];
  const int32_t splits = (s.query_pos + kDecodeSplitKeys) / kDecodeSplitKeys;
  const int64_t first = (static_cast<int64_t>(seq) * a.n_q_heads + h) * n_splits;
  float m = hp.virtual_sink_logit;
  for (int i = 0; i < splits; ++i) m = fmaxf(m, ws.stats[(first + i) * 3]);
  float sum_set = 0.0f, sum_rest = 0.0f, acc_set = 0.0f, acc_rest = 0.0f;
  for (int i = 0; i < splits; ++i) {
    const float* st = ws.stats + (first + i) * 3;
    if (st[0] == -INFINITY) continue;
    const float w = __expf(st[0] - m);
    sum_set += w * st[1];
    sum_rest += w * st[2];
    const float* acc = ws.acc + (first + i) * 2 * kHeadDim;
    acc_set += w * acc[col];
    acc_rest += w * acc[kHeadDim + col];
  }
  const SoftmaxTotals totals = CloseSoftmax(hp, m, sum_set, sum_rest);
  const int64_t row = static_cast<int64_t>(QueryRow(s, seq)) * a.n_q_heads + h;
  a.out[row * kHeadDim + col] = totals.Output(acc_set, acc_rest);
  if (a.lse != nullptr && col == 0) a.lse[row] = totals.lse;
}

template <int kHeadDim>
absl::Status Launch(const DecodeAttentionArgs& a, void* workspace, cudaStream_t stream) {
  const int32_t n_splits = NumSplits(a.max_tokens);
  const Workspace ws = Carve(workspace, a.n_seqs, a.n_q_heads, n_splits);
  const int group = a.n_q_heads / a.n_kv_heads;
  DecodePartialKernel<kHeadDim><<<dim3(n_splits, a.n_kv_heads, a.n_seqs), group * kWarp, 0, stream>>>(a, ws,
                                                                                                      n_splits);
  if (absl::Status st = CudaErrorToStatus(cudaGetLastError(), "DecodePartialKernel"); !st.ok()) return st;
  DecodeMergeKernel<kHeadDim><<<dim3(a.n_q_heads, a.n_seqs), kHeadDim, 0, stream>>>(a, ws, n_splits);
  return CudaErrorToStatus(cudaGetLastError(), "DecodeMergeKernel");
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int32_t n_seqs, int32_t n_q_heads, int32_t head_dim, int32_t max_tokens) {
  const int64_t slots = static_cast<int64_t>(n_seqs) * n_q_heads * NumSplits(max_tokens);
  return static_cast<size_t>(slots) * (3 + 2 * static_cast<int64_t>(head_dim)) * sizeof(float);
}

absl::Status DecodeAttentionCuda(const DecodeAttentionArgs& a, void* workspace, size_t workspace_bytes,
                                 void* stream) {
  if (a.n_seqs < 0 || a.max_tokens < 1 || a.n_kv_heads < 1 || a.n_q_heads % a.n_kv_heads != 0 ||
      a.n_q_heads / a.n_kv_heads > kMaxGroup) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: n_seqs=", a.n_seqs, " max_tokens=",
                                                   a.max_tokens, " heads ", a.n_q_heads, "/", a.n_kv_heads,
                                                   " (at most ", kMaxGroup, " query heads per KV head)"));
  }
  if (a.n_seqs == 0) return absl::OkStatus();
  if (a.seqs == nullptr || a.q == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("DecodeAttentionCuda: null pointer");
  }
  if (workspace_bytes < DecodeAttentionWorkspaceBytes(a.n_seqs, a.n_q_heads, a.head_dim, a.max_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: workspace of ", workspace_bytes,
                                                   " bytes is short"));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.head_dim) {
    case 64:
      return Launch<64>(a, workspace, s);
    case 128:
      return Launch<128>(a, workspace, s);
    default:
      return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: head_dim ", a.head_dim,
                                                     " (64 or 128 only)"));
  }
}

}  // namespace attnserve
