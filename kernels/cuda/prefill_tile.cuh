// The pieces of the prefill kernel's pass over one tile of keys
// (paged_prefill_kernels.cuh): the block's shared memory, staging a tile of
// keys or values, the two tensor-core products, and each row's hooks and
// online softmax between them. Device code only, in an unnamed namespace
// as the kernel's.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/common/attention_hooks.h"
#include "kernels/common/paged_kv.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/paged_prefill.h"
#include "kernels/cuda/shared_memory.cuh"
#include "kernels/cuda/tensor_core.cuh"

namespace attnserve {
namespace {

constexpr int kPrefillWarps = kPrefillTileRows / 16;  // 16 rows a warp: the products' M
constexpr int kPrefillThreads = kPrefillWarps * kWarp;
constexpr int kPrefillKeys = 64;                       // keys a tile
constexpr int kPrefillKeyBlocks = kPrefillKeys / 8;    // the score products' N blocks

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

// A block's shared memory (dynamic: about 52 KB at head_dim 128): the
// queries, whole for the block, and one tile of keys and one of values,
// each loaded while the other is used (FlashAttention-2's order). Rows are
// padded by 16 bytes, so that ldmatrix's eight rows of a matrix fall on
// different banks.
template <int kHeadDim>
struct alignas(128) PrefillShared {
  static constexpr int kLd = kHeadDim + 8;  // halves a row
  // Queries in fp16, each row divided by a power of two (q_scale) that
  // brings it into fp16's range.
  __half q[kPrefillTileRows][kLd];
  __half k[kPrefillKeys][kLd];
  __half v[kPrefillKeys][kLd];
  float q_scale[kPrefillTileRows];
  // The cache rows of this tile's keys and the next's (MapTileRows).
  uint32_t cache_rows[2][kPrefillKeys];
};

// One of a lane's two rows (rows group and group + 8 of its warp's 16).
struct PrefillRow {
  const AttentionHeadParams* hp = nullptr;
  int32_t pos = -1;      // the query's position; -1: no query (every key hidden)
  int64_t q_row = 0;     // its row of q, sink_q, out: QueryRow · n_q_heads + head
  float inv_scale = 1.0f;  // 1 / the row's q_scale
  float factor = 0.0f;     // what the staged query · k is multiplied by for the logit
  // A tile of keys [t0, t0 + 64) with t0 >= whole_from and no key past the
  // query is seen whole, no key through a per-key hook (PlainKeysFrom).
  int32_t whole_from = INT32_MAX;
};

constexpr uint32_t kNoCacheRow = 0xffffffffu;

// cache_rows[k]: key t0 + k's row in the layer's cache (PagedKv::RowIndex:
// the same for keys and values), or kNoCacheRow for keys not loaded (past
// the tile's last query, or seen by none of its queries). A thread a key,
// once for the tile's keys and values. (32 bits hold the rows of a pool up
// to 512 GiB at head_dim 64.)
__device__ __forceinline__ void MapTileRows(uint32_t* cache_rows, const PagedKv& kv, const SequenceAttentionParams& p,
                                            int32_t first_pos, int g, int group, int32_t t0, int32_t end) {
  if (threadIdx.x >= kPrefillKeys) return;
  const int32_t j = t0 + static_cast<int32_t>(threadIdx.x);
  cache_rows[threadIdx.x] =
      j < end && TileLoads(p, first_pos, g, group, j) ? static_cast<uint32_t>(kv.RowIndex(g, j)) : kNoCacheRow;
}

// This thread's share of a tile of keys (or values) from `cache` into
// `tile`, rows as mapped: 16-byte pieces, a warp's pass covering whole rows;
// keys not loaded become zeros, which the products may meet.
template <int kHeadDim>
__device__ __forceinline__ void StageTile(__half (*tile)[PrefillShared<kHeadDim>::kLd], const fp16_t* cache,
                                          const uint32_t* cache_rows) {
  constexpr int kPieces = kHeadDim / 8;
  constexpr int kRowsPerPass = kPrefillThreads / kPieces;
  const int piece = threadIdx.x % kPieces;
#pragma unroll
  for (int pass = 0; pass < kPrefillKeys / kRowsPerPass; ++pass) {
    const int kk = threadIdx.x / kPieces + pass * kRowsPerPass;
    const uint32_t row = cache_rows[kk];
    const bool load = row != kNoCacheRow;
    CopyAsync16OrZeros(&tile[kk][8 * piece], cache + (load ? static_cast<int64_t>(row) * kHeadDim + 8 * piece : 0), load);
  }
  CommitCopies();
}

// This lane's row address for ldmatrix of key blocks n and n + 1 (n even),
// columns d0 to d0 + 15: the B fragments of both, in that order.
template <int kHeadDim>
__device__ __forceinline__ const __half* KeyBlocksRow(const __half (*k)[kHeadDim + 8], int n, int d0) {
  const int lane = threadIdx.x % kWarp;
  return &k[8 * n + lane % 8 + lane / 16 * 8][d0 + lane / 8 % 2 * 8];
}

// s[n] += the warp's 16 rows of queries · the tile's keys 8n to 8n + 7, with
// the queries' columns d0 to d0 + 15 as fragments `qa(d0, a)`.
template <int kHeadDim, typename QueryFragments>
__device__ __forceinline__ void ScoreTile(float (&s)[kPrefillKeyBlocks][4], const __half (*k)[kHeadDim + 8],
                                          const QueryFragments& qa) {
#pragma unroll
  for (int d0 = 0; d0 < kHeadDim; d0 += 16) {
    uint32_t a[4];
    qa(d0, a);
#pragma unroll
    for (int n = 0; n < kPrefillKeyBlocks; n += 2) {
      uint32_t kb[4];
      LoadMatrices<false>(kb, KeyBlocksRow<kHeadDim>(k, n, d0));
      MmaF16(s[n], a, kb[0], kb[1]);
      MmaF16(s[n + 1], a, kb[2], kb[3]);
    }
  }
}

// Replaces the scores of sink keys (below sink_tokens) in key block n of
// the tile at t0 with those of the queries turned at their cache slots.
template <int kHeadDim>
__device__ void SinkScores(float (&s)[4], const float* sink_q, const PrefillRow (&rows)[2],
                           const __half (*k)[kHeadDim + 8], int32_t t0, int n, int32_t sink_tokens) {
  const int lane = threadIdx.x % kWarp, quad = lane % 4;
  float dot[4] = {};
#pragma unroll
  for (int d0 = 0; d0 < kHeadDim; d0 += 16) {
    uint32_t qa[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const PrefillRow& row = rows[i % 2];
      const int col = d0 + 2 * quad + 8 * (i / 2);
      const float2 x = row.pos >= 0 ? *reinterpret_cast<const float2*>(sink_q + row.q_row * kHeadDim + col)
                                    : make_float2(0.0f, 0.0f);
      qa[i] = PackHalves(x.x * row.inv_scale, x.y * row.inv_scale);
    }
    uint32_t kb[4];  // keys of blocks n and n ^ 1, as ScoreTile loads them
    const int pair = n & ~1;
    LoadMatrices<false>(kb, KeyBlocksRow<kHeadDim>(k, pair, d0));
    MmaF16(dot, qa, kb[n - pair == 0 ? 0 : 2], kb[n - pair == 0 ? 1 : 3]);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (t0 + 8 * n + 2 * quad + i % 2 < sink_tokens) s[i] = dot[i];
  }
}

// o[n] += p · the tile's values, columns 8n to 8n + 7, with the weights of
// keys 16i to 16i + 15 as fragments `pa(i, a)`.
template <int kHeadDim, typename WeightFragments>
__device__ __forceinline__ void AddValues(float (&o)[kHeadDim / 8][4], const __half (*v)[kHeadDim + 8],
                                          const WeightFragments& pa) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int i = 0; i < kPrefillKeys / 16; ++i) {
    uint32_t a[4];
    pa(i, a);
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; n += 2) {
      uint32_t vb[4];  // keys 16i to 16i + 15, columns 8n to 8n + 15, transposed
      LoadMatrices<true>(vb, &v[16 * i + lane % 16][8 * n + lane / 16 * 8]);
      MmaF16(o[n], a, vb[0], vb[1]);
      MmaF16(o[n + 1], a, vb[2], vb[3]);
    }
  }
}

// A lane's two rows' online softmax: running maxima, and the sums of the
// weights of ACT's key set and of the rest (a quad's lanes each hold their
// share of a row's until the end).
struct RowSums {
  float m[2] = {-INFINITY, -INFINITY};
  float set[2] = {};
  float rest[2] = {};
};

// Turns the tile's scores into weights against each row's new maximum,
// folding the tile into the sums and rescaling the value sums o; returns
// ACT's membership bits (4n + i: s[n][i]'s key is in its row's set).
template <int kHeadDim>
__device__ __forceinline__ unsigned SoftmaxTile(float (&s)[kPrefillKeyBlocks][4], const PrefillRow (&rows)[2],
                                                const SequenceAttentionParams& params, int32_t t0, RowSums& sums,
                                                float (&o)[kHeadDim / 8][4]) {
  const int quad = threadIdx.x % 4;
  unsigned in_set = 0;
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const PrefillRow& row = rows[x];
    float tile_max = -INFINITY;
    if (t0 >= row.whole_from && t0 + kPrefillKeys - 1 <= row.pos) {
      // Every key seen, none through a hook: the scaled scores (most tiles
      // of a prompt).
#pragma unroll
      for (int n = 0; n < kPrefillKeyBlocks; ++n) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          s[n][2 * x + c] *= row.factor;
          tile_max = fmaxf(tile_max, s[n][2 * x + c]);
        }
      }
    } else {
      const bool reweights = row.pos >= 0 && row.hp->reweight_beta != 1.0f;
#pragma unroll
      for (int n = 0; n < kPrefillKeyBlocks; ++n) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int32_t j = t0 + 8 * n + 2 * quad + c;
          float& logit = s[n][2 * x + c];
          if (row.pos >= 0 && HeadKeyVisible(params, *row.hp, row.pos, j)) {
            logit = logit * row.factor + KeyBias(params, *row.hp, j);
            if (reweights && InReweightSet(params, *row.hp, j)) in_set |= 1u << (4 * n + 2 * x + c);
          } else {
            logit = -INFINITY;
          }
          tile_max = fmaxf(tile_max, logit);
        }
      }
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_m = fmaxf(sums.m[x], tile_max);
    // Nothing seen yet: the weights are zeros and there is nothing to rescale.
    const float rescale = new_m == -INFINITY ? 1.0f : __expf(sums.m[x] - new_m);
    sums.m[x] = new_m;
    float set = 0.0f, rest = 0.0f;
#pragma unroll
    for (int n = 0; n < kPrefillKeyBlocks; ++n) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float& p = s[n][2 * x + c];
        p = p == -INFINITY ? 0.0f : __expf(p - new_m);
        (in_set >> (4 * n + 2 * x + c) & 1u ? set : rest) += p;
      }
    }
    sums.set[x] = sums.set[x] * rescale + set;
    sums.rest[x] = sums.rest[x] * rescale + rest;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
#pragma unroll
      for (int c = 0; c < 2; ++c) o[n][2 * x + c] *= rescale;
    }
  }
  return in_set;
}

}  // namespace
}  // namespace attnserve
