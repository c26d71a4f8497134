#include "kernels/cuda/paged_prefill.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_warp.cuh"
#include "kernels/cuda/device.h"

namespace attnserve {
namespace {

constexpr int kMaxWarps = 16;
constexpr int kKeyTile = 32;  // a key per lane

// Key j is loaded for the tile when its earliest query (whose windows reach
// furthest back) sees it under the sequence's set and some head of the
// group: later queries see no older key, so keys of pages given back (a
// window moved past them) are never touched.
__device__ bool TileLoads(const DecodeSequence& first, int g, int group, int32_t j) {
  const int32_t pos = first.query_pos;
  const SequenceAttentionParams& p = first.params;
  if (!InSinksOrWindow(p.sink_tokens, p.window_tokens, pos, j)) return false;
  for (int i = 0; i < group; ++i) {
    const AttentionHeadParams& hp = p.heads[g * group + i];
    if (InSinksOrWindow(hp.sink_tokens, hp.window_tokens, pos, j)) return true;
  }
  return false;
}

// Block (tile, g): warp w is query w / group of the tile, query head
// g * group + w % group. Each 32-key tile of K and V is staged in shared
// memory; each lane scores one key, the warp updates its online softmax, and
// every lane accumulates head_dim / 32 value columns, as the decode kernel.
template <int kHeadDim>
__global__ void __launch_bounds__(kMaxWarps * kWarp) PrefillKernel(PrefillAttentionArgs a) {
  constexpr int kPairs = kHeadDim / 2;
  constexpr int kCols = kHeadDim / kWarp;
  // Lane j reads key row j: a row of kPairs + 1 words puts the lanes on 32
  // different banks.
  __shared__ __half2 k_sh[kKeyTile][kPairs + 1];
  __shared__ __half2 v_sh[kKeyTile][kPairs];
  __shared__ bool load_sh[kKeyTile];
  __shared__ float q_sh[kMaxWarps][kHeadDim];
  __shared__ float sink_sh[kMaxWarps][kHeadDim];

  const PrefillTile tile = a.tiles[blockIdx.x];
  const int g = blockIdx.y;
  const int group = a.n_q_heads / a.n_kv_heads;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int qi = warp / group;
  const bool active = qi < tile.n_queries;
  const int32_t entry = tile.first_entry + (active ? qi : 0);
  const DecodeSequence& first = a.entries[tile.first_entry];
  const DecodeSequence& s = a.entries[entry];
  const int h = g * group + warp % group;
  const int64_t row = static_cast<int64_t>(QueryRow(s, entry)) * a.n_q_heads + h;
  const int32_t end = a.entries[tile.first_entry + tile.n_queries - 1].query_pos + 1;
  if (active) {
    for (int c = lane; c < kHeadDim; c += kWarp) {
      q_sh[warp][c] = a.q[row * kHeadDim + c];
      sink_sh[warp][c] = a.sink_q != nullptr ? a.sink_q[row * kHeadDim + c] : q_sh[warp][c];
    }
  }
  const AttentionHeadParams& hp = s.params.heads[h];
  const bool reweights = hp.reweight_beta != 1.0f;
  WarpSoftmax<kCols> sm;

  // Whole key tiles behind every window the tile's queries have are skipped
  // (a streaming sequence at a million tokens reads sinks + window).
  const KeyRange hidden = HiddenKeys(first.params, g * group, group, first.query_pos);
  const int32_t skip_begin = (hidden.begin + kKeyTile - 1) / kKeyTile * kKeyTile;
  const int32_t skip_end = hidden.end / kKeyTile * kKeyTile;
  for (int32_t t0 = 0; t0 < end; t0 += kKeyTile) {
    if (t0 == skip_begin && skip_end > skip_begin) {
      t0 = skip_end;
      if (t0 >= end) break;
    }
    __syncthreads();  // the previous tile's readers are done
    if (threadIdx.x < kKeyTile) {
      const int32_t j = t0 + threadIdx.x;
      load_sh[threadIdx.x] = j < end && TileLoads(first, g, group, j);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kKeyTile * kPairs; i += blockDim.x) {
      const int kk = i / kPairs, c = i % kPairs;
      if (!load_sh[kk]) continue;
      k_sh[kk][c] = reinterpret_cast<const __half2*>(first.kv.Row(first.kv.keys, g, t0 + kk))[c];
      v_sh[kk][c] = reinterpret_cast<const __half2*>(first.kv.Row(first.kv.values, g, t0 + kk))[c];
    }
    __syncthreads();
    if (!active || t0 > s.query_pos) continue;  // warp-uniform

    const int32_t j = t0 + lane;
    float logit = -INFINITY;
    bool in_set = false;
    if (load_sh[lane] && HeadKeyVisible(s.params, hp, s.query_pos, j)) {
      const float* qv = j < s.params.sink_tokens ? sink_sh[warp] : q_sh[warp];
      float dot = 0.0f;
#pragma unroll 8
      for (int c = 0; c < kPairs; ++c) {
        const float2 kf = __half22float2(k_sh[lane][c]);
        dot = fmaf(qv[2 * c], kf.x, fmaf(qv[2 * c + 1], kf.y, dot));
      }
      logit = dot * hp.logit_scale + KeyBias(s.params, hp, j);
      in_set = reweights && InReweightSet(s.params, hp, j);
    }
    float p;
    if (!sm.AddTile(logit, in_set, &p)) continue;
    for (int kk = 0; kk < kKeyTile; ++kk) {
      const float pk = __shfl_sync(0xffffffffu, p, kk);
      const bool set_k = __shfl_sync(0xffffffffu, in_set, kk);
      if (pk == 0.0f) continue;  // warp-uniform
      sm.AddValue(v_sh[kk], lane, pk, set_k);
    }
  }
  if (!active) return;
  // The virtual sink joins the denominator, ACT's scales apply, as the
  // decode kernel's merge of a single split.
  const float top = fmaxf(sm.m, hp.virtual_sink_logit);
  const float w = sm.m == -INFINITY ? 0.0f : __expf(sm.m - top);
  const float sum_set = sm.sum_set * w, sum_rest = sm.sum_rest * w;
  const float sink = hp.virtual_sink_logit == -INFINITY ? 0.0f : __expf(hp.virtual_sink_logit - top);
  const float den = sum_set + sum_rest + sink;
  const ReweightScales scales = ComputeReweightScales(hp.reweight_beta, sum_set, sum_rest);
#pragma unroll
  for (int c = 0; c < kCols / 2; ++c) {
    const int col = 2 * (lane + c * kWarp);
    for (int k = 0; k < 2; ++k) {
      const float o = (scales.in_set * sm.acc_set[2 * c + k] + scales.rest * sm.acc_rest[2 * c + k]) * w;
      a.out[row * kHeadDim + col + k] = den > 0.0f ? o / den : 0.0f;
    }
  }
  if (a.lse != nullptr && lane == 0) a.lse[row] = den > 0.0f ? top + logf(den) : -INFINITY;
}

}  // namespace

absl::Status PrefillAttentionCuda(const PrefillAttentionArgs& a, void* stream) {
  if (a.n_tiles < 0 || a.n_kv_heads < 1 || a.n_q_heads % a.n_kv_heads != 0 ||
      a.n_q_heads / a.n_kv_heads > kMaxWarps || a.n_kv_heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillAttentionCuda: tiles=", a.n_tiles, " heads ", a.n_q_heads,
                                                   "/", a.n_kv_heads, " (at most ", kMaxWarps,
                                                   " query heads per KV head)"));
  }
  if (a.n_tiles == 0) return absl::OkStatus();
  if (a.entries == nullptr || a.tiles == nullptr || a.q == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("PrefillAttentionCuda: null pointer");
  }
  const int group = a.n_q_heads / a.n_kv_heads;
  const int threads = PrefillQueriesPerTile(group) * group * kWarp;
  const dim3 grid(a.n_tiles, a.n_kv_heads);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.head_dim) {
    case 64:
      PrefillKernel<64><<<grid, threads, 0, s>>>(a);
      break;
    case 128:
      PrefillKernel<128><<<grid, threads, 0, s>>>(a);
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("PrefillAttentionCuda: head_dim ", a.head_dim, " (64 or 128 only)"));
  }
  return CudaErrorToStatus(cudaGetLastError(), "PrefillKernel");
}

}  // namespace attnserve
