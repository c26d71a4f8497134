// The prefill attention kernel (paged_prefill.h), as a header:
// paged_prefill.cu launches it on a stream, and the CUDA tests also run it
// on the host through the emulator (tests/cuda_emu), where each includer
// gets its own copy (an unnamed namespace).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_warp.cuh"
#include "kernels/cuda/paged_prefill.h"
#include "kernels/cuda/shared_memory.cuh"

namespace attnserve {
namespace {

constexpr int kMaxWarps = 16;
constexpr int kKeyTile = 32;  // a key per lane
constexpr int kRows = 16;     // the MMAs' M: a block's rows (warps), padded with zeros
static_assert(kRows >= kMaxWarps);

// Key j is loaded for the tile when its earliest query (whose windows reach
// furthest back) sees it under the sequence's set and some head of the
// group: later queries see no older key, so keys of pages given back (a
// window moved past them) are never touched.
__device__ bool TileLoads(const SequenceAttentionParams& p, int32_t pos, int g, int group, int32_t j) {
  if (!InSinksOrWindow(p.sink_tokens, p.window_tokens, pos, j)) return false;
  for (int i = 0; i < group; ++i) {
    const AttentionHeadParams& hp = p.heads[g * group + i];
    if (InSinksOrWindow(hp.sink_tokens, hp.window_tokens, pos, j)) return true;
  }
  return false;
}

// A block's shared memory (dynamic: about 66 KB at head_dim 128). Every
// array the MMAs read or write starts on 32 bytes, and row strides are
// multiples of 16 bytes, as wmma's loads and stores want.
template <int kHeadDim>
struct alignas(128) PrefillShared {
  static constexpr int kLdh = kHeadDim + 8;  // halves a row of K, V and Q
  static constexpr int kLdS = kKeyTile + 4;  // floats a row of scores
  static constexpr int kLdP = kKeyTile + 8;  // halves a row of weights
  static constexpr int kLdO = kHeadDim + 4;  // floats a row of outputs
  __half k[kKeyTile][kLdh];
  __half v[kKeyTile][kLdh];
  // Queries as hi + lo halves: their products with the fp16 keys, summed
  // in fp32, are the fp32 queries' to about 2^-22.
  __half q_hi[kRows][kLdh];
  __half q_lo[kRows][kLdh];
  float q[kMaxWarps][kHeadDim];       // for keys scored on the CUDA cores
  float sink_q[kMaxWarps][kHeadDim];
  float s[kRows][kLdS];               // the tile's scores, q·k
  __half p[2][2][kRows][kLdP];        // weights [set, rest][hi, lo]
  float o[2][kRows][kLdO];            // value sums [set, rest]
  bool load[kKeyTile];
};

// Block (tile, g): warp w is row w, query w / group of the tile and query
// head g * group + w % group. Each 32-key tile of K and V is staged in
// shared memory; the scores of every row against it are one tensor-core
// product (Q·Kᵀ), each warp then applies its row's hooks and online softmax
// (a key per lane, as the decode kernel), and the weighted values are a
// second product (P·V) into per-row sums that the warps rescale.
template <int kHeadDim>
__global__ void __launch_bounds__(kMaxWarps * kWarp) PrefillKernel(PrefillAttentionArgs a) {
  using Shared = PrefillShared<kHeadDim>;
  using namespace nvcuda;
  constexpr int kPairs = kHeadDim / 2;
  constexpr int kColTiles = kHeadDim / 16;
  unsigned char* shared_bytes = DynamicShared();
  Shared& sh = *reinterpret_cast<Shared*>(shared_bytes);

  const PrefillTile tile = a.tiles[blockIdx.x];
  const int g = blockIdx.y;
  const int group = a.n_q_heads / a.n_kv_heads;
  const int n_warps = blockDim.x / kWarp;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int qi = warp / group;
  const bool active = qi < tile.n_queries;
  const int32_t entry = tile.first_entry + (active ? qi : 0);
  // The tile's keys are its first query's, in the launch's layer.
  const DecodeSequence& first = a.entries[tile.first_entry];
  const SequenceAttentionParams& first_p = LayerParams(first, a.layer);
  const PagedKv kv = first.kv.AtLayer(a.layer);
  const DecodeSequence& s = a.entries[entry];
  const SequenceAttentionParams& params = LayerParams(s, a.layer);
  const int h = g * group + warp % group;
  const int64_t row = static_cast<int64_t>(QueryRow(s, entry)) * a.n_q_heads + h;
  const int32_t end = a.entries[tile.first_entry + tile.n_queries - 1].query_pos + 1;

  // Rows without a query (past the block's warps, or of absent queries)
  // stay zero in every product.
  const __half zero = __float2half(0.0f);
  for (int i = threadIdx.x; i < kRows * Shared::kLdh; i += blockDim.x) {
    (&sh.q_hi[0][0])[i] = zero;
    (&sh.q_lo[0][0])[i] = zero;
  }
  for (int i = threadIdx.x; i < 4 * kRows * Shared::kLdP; i += blockDim.x) (&sh.p[0][0][0][0])[i] = zero;
  for (int i = threadIdx.x; i < 2 * kRows * Shared::kLdO; i += blockDim.x) (&sh.o[0][0][0])[i] = 0.0f;
  __syncthreads();
  // A query past fp16's range is scored on the CUDA cores.
  bool q_fits = true;
  if (active) {
    for (int c = lane; c < kHeadDim; c += kWarp) {
      const float x = a.q[row * kHeadDim + c];
      sh.q[warp][c] = x;
      sh.sink_q[warp][c] = a.sink_q != nullptr ? a.sink_q[row * kHeadDim + c] : x;
      const __half hi = __float2half_rn(x);
      sh.q_hi[warp][c] = hi;
      sh.q_lo[warp][c] = __float2half_rn(x - __half2float(hi));
      q_fits = q_fits && fabsf(x) < 65504.0f;
    }
  }
  q_fits = __all_sync(0xffffffffu, q_fits);
  const AttentionHeadParams& hp = params.heads[h];
  const bool reweights = hp.reweight_beta != 1.0f;
  WarpRowSoftmax sm;

  // Whole key tiles behind every window the tile's queries have are skipped
  // (a streaming sequence at a million tokens reads sinks + window).
  const KeyRange hidden = HiddenKeys(first_p, g * group, group, first.query_pos);
  const int32_t skip_begin = (hidden.begin + kKeyTile - 1) / kKeyTile * kKeyTile;
  const int32_t skip_end = hidden.end / kKeyTile * kKeyTile;
  for (int32_t t0 = 0; t0 < end; t0 += kKeyTile) {
    if (t0 == skip_begin && skip_end > skip_begin) {
      t0 = skip_end;
      if (t0 >= end) break;
    }
    __syncthreads();  // the previous tile's products are done
    if (threadIdx.x < kKeyTile) {
      const int32_t j = t0 + threadIdx.x;
      sh.load[threadIdx.x] = j < end && TileLoads(first_p, first.query_pos, g, group, j);
    }
    __syncthreads();
    // Keys not loaded are zeros: the products must see no stale NaN. (A
    // loaded key's value meets every row's weight, zero ones too: an Inf in
    // the cache, which only a model overflowing fp16 writes, spoils rows
    // that do not see it.)
    const __half2 zeros = __float2half2_rn(0.0f);
    for (int i = threadIdx.x; i < kKeyTile * kPairs; i += blockDim.x) {
      const int kk = i / kPairs, c = i % kPairs;
      const bool load = sh.load[kk];
      reinterpret_cast<__half2*>(sh.k[kk])[c] =
          load ? reinterpret_cast<const __half2*>(kv.Row(kv.keys, g, t0 + kk))[c] : zeros;
      reinterpret_cast<__half2*>(sh.v[kk])[c] =
          load ? reinterpret_cast<const __half2*>(kv.Row(kv.values, g, t0 + kk))[c] : zeros;
    }
    __syncthreads();
    // Scores: warp w < 2 takes keys [16w, 16w + 16) of every row.
    if (warp < kKeyTile / 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kb;  // Kᵀ: K's rows as columns
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int d = 0; d < kHeadDim; d += 16) {
        wmma::load_matrix_sync(kb, &sh.k[warp * 16][d], Shared::kLdh);
        wmma::load_matrix_sync(qa, &sh.q_hi[0][d], Shared::kLdh);
        wmma::mma_sync(acc, qa, kb, acc);
        wmma::load_matrix_sync(qa, &sh.q_lo[0][d], Shared::kLdh);
        wmma::mma_sync(acc, qa, kb, acc);
      }
      wmma::store_matrix_sync(&sh.s[0][warp * 16], acc, Shared::kLdS, wmma::mem_row_major);
    }
    __syncthreads();

    // This row's hooks and online softmax; its weights as hi + lo halves,
    // ACT's set apart from the rest, and its value sums rescaled.
    float p = 0.0f, rescale = 1.0f;
    bool in_set = false, any = false;
    if (active && t0 <= s.query_pos) {  // warp-uniform
      const int32_t j = t0 + lane;
      float logit = -INFINITY;
      if (sh.load[lane] && HeadKeyVisible(params, hp, s.query_pos, j)) {
        const bool sink_key = j < params.sink_tokens && a.sink_q != nullptr;
        float dot = sh.s[warp][lane];
        if (sink_key || !q_fits) {
          // Sink keys meet the query turned at its cache slot.
          dot = DotHalf<kHeadDim>(sink_key ? sh.sink_q[warp] : sh.q[warp], sh.k[lane]);
        }
        logit = dot * hp.logit_scale + KeyBias(params, hp, j);
        in_set = reweights && InReweightSet(params, hp, j);
      }
      any = sm.AddTile(logit, in_set, &p, &rescale);
    }
    if (any) {
      for (int c = lane; c < kHeadDim; c += kWarp) {
        sh.o[0][warp][c] *= rescale;
        sh.o[1][warp][c] *= rescale;
      }
    } else {
      p = 0.0f;
    }
    const float part[2] = {in_set ? p : 0.0f, in_set ? 0.0f : p};
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      const __half hi = __float2half_rn(part[x]);
      sh.p[x][0][warp][lane] = hi;
      sh.p[x][1][warp][lane] = __float2half_rn(part[x] - __half2float(hi));
    }
    __syncthreads();
    // Value sums += P·V: a task per (set or rest, 16 output columns).
    for (int task = warp; task < 2 * kColTiles; task += n_warps) {
      const int x = task / kColTiles, col = task % kColTiles * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vb;
      wmma::load_matrix_sync(acc, &sh.o[x][0][col], Shared::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int k0 = 0; k0 < kKeyTile; k0 += 16) {
        wmma::load_matrix_sync(vb, &sh.v[k0][col], Shared::kLdh);
        wmma::load_matrix_sync(pa, &sh.p[x][0][0][k0], Shared::kLdP);
        wmma::mma_sync(acc, pa, vb, acc);
        wmma::load_matrix_sync(pa, &sh.p[x][1][0][k0], Shared::kLdP);
        wmma::mma_sync(acc, pa, vb, acc);
      }
      wmma::store_matrix_sync(&sh.o[x][0][col], acc, Shared::kLdO, wmma::mem_row_major);
    }
  }
  __syncthreads();  // the last tile's value sums
  if (!active) return;
  // The virtual sink joins the denominator, ACT's scales apply, as the
  // decode kernel's merge of a single split.
  const float top = fmaxf(sm.m, hp.virtual_sink_logit);
  const float w = sm.m == -INFINITY ? 0.0f : __expf(sm.m - top);
  const SoftmaxTotals totals = CloseSoftmax(hp, top, sm.sum_set * w, sm.sum_rest * w);
  for (int c = lane; c < kHeadDim; c += kWarp) {
    a.out[row * kHeadDim + c] = totals.Output(sh.o[0][warp][c] * w, sh.o[1][warp][c] * w);
  }
  if (a.lse != nullptr && lane == 0) a.lse[row] = totals.lse;
}

// PrefillAttentionCuda's checks and launch, through `launch(name, kernel,
// grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunPrefillAttention(const PrefillAttentionArgs& a, const Launcher& launch) {
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
  const dim3 grid(a.n_tiles, a.n_kv_heads), block(PrefillQueriesPerTile(group) * group * kWarp);
  switch (a.head_dim) {
    case 64:
      return launch("PrefillKernel", PrefillKernel<64>, grid, block, sizeof(PrefillShared<64>), a);
    case 128:
      return launch("PrefillKernel", PrefillKernel<128>, grid, block, sizeof(PrefillShared<128>), a);
    default:
      return absl::InvalidArgumentError(absl::StrCat("PrefillAttentionCuda: head_dim ", a.head_dim, " (64 or 128 only)"));
  }
}

}  // namespace
}  // namespace attnserve
