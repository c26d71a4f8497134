// The prefill attention kernel (paged_prefill.h), as a header:
// paged_prefill.cu launches it on a stream, and the CUDA tests also run it
// on the host through the emulator (tests/cuda_emu), where each includer
// gets its own copy (an unnamed namespace).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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
constexpr int kPrefillMaxGroup = 16;                   // as the decode kernel's

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
};

// The power of two a query row whose largest |element| is `largest` is
// divided by to stay well inside fp16 (2^14, leaving room for its cache-slot
// twin); 1 for every row a model not overflowing fp16 writes.
__device__ __forceinline__ float QueryScale(float largest) {
  if (!(largest < INFINITY)) return 1.0f;  // Inf or NaN: as the fp32 math spoils it
  int exponent = 0;
  frexpf(largest, &exponent);  // largest < 2^exponent
  return exponent > 14 ? ldexpf(1.0f, exponent - 14) : 1.0f;
}

// One of a lane's two rows (rows group and group + 8 of its warp's 16).
struct PrefillRow {
  const AttentionHeadParams* hp = nullptr;
  int32_t pos = -1;      // the query's position; -1: no query (every key hidden)
  int64_t q_row = 0;     // its row of q, sink_q, out: QueryRow · n_q_heads + head
  float inv_scale = 1.0f;  // 1 / the row's q_scale
  float factor = 0.0f;     // what the staged query · k is multiplied by for the logit
  // No hook that depends on the key: a key's logit is its scaled score
  // wherever the causal mask shows it.
  bool plain = false;
};

// Row r of the tile: query r / group, query head g · group + r % group.
__device__ __forceinline__ PrefillRow TileRow(const PrefillAttentionArgs& a, const PrefillTile& tile, int g,
                                              int group, int r) {
  PrefillRow row;
  const int qi = r / group;
  if (qi >= tile.n_queries) return row;
  const int32_t entry = tile.first_entry + qi;
  const DecodeSequence& s = a.entries[entry];
  const int h = g * group + r % group;
  row.hp = &LayerParams(s, a.layer).heads[h];
  row.pos = s.query_pos;
  row.q_row = static_cast<int64_t>(QueryRow(s, entry)) * a.n_q_heads + h;
  return row;
}

// Stages the queries of rows [0, n_rows) scaled and rounded to fp16 (as the
// CPU kernel rounds them), zeros past them, a warp a row.
template <int kHeadDim>
__device__ void StageQueries(const PrefillAttentionArgs& a, const PrefillTile& tile, int g, int group,
                             PrefillShared<kHeadDim>& sh) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int r = warp; r < kPrefillTileRows; r += kPrefillWarps) {
    const PrefillRow row = TileRow(a, tile, g, group, r);
    const float2* q = nullptr;
    const float2* sink_q = nullptr;
    float largest = 0.0f;
    if (row.pos >= 0) {  // warp-uniform
      q = reinterpret_cast<const float2*>(a.q + row.q_row * kHeadDim);
      if (a.sink_q != nullptr) sink_q = reinterpret_cast<const float2*>(a.sink_q + row.q_row * kHeadDim);
      for (int c = lane; c < kHeadDim / 2; c += kWarp) {
        largest = fmaxf(largest, fmaxf(fabsf(q[c].x), fabsf(q[c].y)));
        if (sink_q != nullptr) largest = fmaxf(largest, fmaxf(fabsf(sink_q[c].x), fabsf(sink_q[c].y)));
      }
      largest = WarpMax(largest);
    }
    const float scale = QueryScale(largest), inv = 1.0f / scale;
    for (int c = lane; c < kHeadDim / 2; c += kWarp) {
      const float2 x = q != nullptr ? q[c] : make_float2(0.0f, 0.0f);
      reinterpret_cast<uint32_t*>(sh.q[r])[c] = PackHalves(x.x * inv, x.y * inv);
    }
    if (lane == 0) sh.q_scale[r] = scale;
  }
}

// This thread's share of a tile of keys (or values) from `cache` into
// `tile`: 16-byte pieces, a warp's pass covering whole rows; rows not
// loaded (mask bit clear) become zeros, which the products may meet.
template <int kHeadDim>
__device__ void StageTile(__half (*tile)[PrefillShared<kHeadDim>::kLd], const PagedKv& kv, const fp16_t* cache,
                          int g, int32_t t0, unsigned mask) {
  constexpr int kPieces = kHeadDim / 8;
  constexpr int kRowsPerPass = kPrefillThreads / kPieces;
  const int piece = threadIdx.x % kPieces;
#pragma unroll
  for (int pass = 0; pass < kPrefillKeys / kRowsPerPass; ++pass) {
    const int kk = threadIdx.x / kPieces + pass * kRowsPerPass;
    __half* to = &tile[kk][8 * piece];
    if (mask >> pass & 1u) {
      CopyAsync16(to, kv.Row(cache, g, t0 + kk) + 8 * piece);
    } else {
      *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
    }
  }
  CommitCopies();
}

// Which of this thread's StageTile rows of the tile at t0 are loaded.
template <int kHeadDim>
__device__ unsigned TileLoadMask(const SequenceAttentionParams& p, int32_t first_pos, int g, int group, int32_t t0,
                                 int32_t end) {
  constexpr int kRowsPerPass = kPrefillThreads / (kHeadDim / 8);
  unsigned mask = 0;
  for (int pass = 0; pass < kPrefillKeys / kRowsPerPass; ++pass) {
    const int32_t j = t0 + static_cast<int32_t>(threadIdx.x) / (kHeadDim / 8) + pass * kRowsPerPass;
    if (j < end && TileLoads(p, first_pos, g, group, j)) mask |= 1u << pass;
  }
  return mask;
}

// s[n] += the warp's 16 rows of queries · the tile's keys 8n to 8n + 7, with
// the queries' columns d0 to d0 + 15 as fragments `qa(d0, a)`.
template <int kHeadDim, typename QueryFragments>
__device__ __forceinline__ void ScoreTile(float (&s)[kPrefillKeyBlocks][4], const __half (*k)[kHeadDim + 8],
                                          const QueryFragments& qa) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int d0 = 0; d0 < kHeadDim; d0 += 16) {
    uint32_t a[4];
    qa(d0, a);
#pragma unroll
    for (int n = 0; n < kPrefillKeyBlocks; n += 2) {
      uint32_t kb[4];  // keys 8n to 8n + 15, columns d0 to d0 + 15
      LoadMatrices<false>(kb, &k[8 * n + lane % 8 + lane / 16 * 8][d0 + lane / 8 % 2 * 8]);
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
    LoadMatrices<false>(kb, &k[8 * pair + lane % 8 + lane / 16 * 8][d0 + lane / 8 % 2 * 8]);
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

// Block (tile, g), kTwoSums when a head of the group reweights (ACT's
// value sums over its key set kept apart from the rest's). Each warp holds
// 16 rows' scores and value sums in registers (FlashAttention-2): per
// 64-key tile, scores on the tensor cores, each row's hooks and online
// softmax on its lanes (a quad of lanes per row), the weights fed back as
// the next product's input.
template <int kHeadDim, bool kTwoSums>
__device__ void PrefillBlock(const PrefillAttentionArgs& a, const PrefillTile& tile, int g, int group) {
  using Shared = PrefillShared<kHeadDim>;
  constexpr int kColBlocks = kHeadDim / 8;
  Shared& sh = *reinterpret_cast<Shared*>(DynamicShared());
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, quad = lane % 4;
  const DecodeSequence& first = a.entries[tile.first_entry];
  const SequenceAttentionParams& params = LayerParams(first, a.layer);
  const PagedKv kv = first.kv.AtLayer(a.layer);
  const int n_rows = tile.n_queries * group;
  const int32_t end = a.entries[tile.first_entry + tile.n_queries - 1].query_pos + 1;
  // The warp's rows see no key past their last query's.
  const bool warp_rows = warp * 16 < n_rows;
  const int32_t warp_end =
      warp_rows ? a.entries[tile.first_entry + min(warp * 16 + 15, n_rows - 1) / group].query_pos + 1 : 0;

  StageQueries<kHeadDim>(a, tile, g, group, sh);
  PrefillRow rows[2];
  for (int x = 0; x < 2; ++x) rows[x] = TileRow(a, tile, g, group, warp * 16 + lane / 4 + 8 * x);

  // Whole key tiles behind every window the tile's queries have are skipped
  // (a streaming sequence at a million tokens reads sinks + window).
  const KeyRange hidden = HiddenKeys(params, g * group, group, first.query_pos);
  const int32_t skip_begin = (hidden.begin + kPrefillKeys - 1) / kPrefillKeys * kPrefillKeys;
  const int32_t skip_end = hidden.end / kPrefillKeys * kPrefillKeys;
  auto tile_at = [&](int32_t t0) { return t0 == skip_begin && skip_end > skip_begin ? skip_end : t0; };

  float m[2] = {-INFINITY, -INFINITY}, sum_set[2] = {}, sum_rest[2] = {};
  float o_rest[kColBlocks][4] = {}, o_set[kTwoSums ? kColBlocks : 1][4] = {};
  int32_t t0 = tile_at(0);
  unsigned mask = TileLoadMask<kHeadDim>(params, first.query_pos, g, group, t0, end);
  if (t0 < end) StageTile<kHeadDim>(sh.k, kv, kv.keys, g, t0, mask);
  bool first_tile = true;
  for (; t0 < end;) {
    __syncthreads();  // every warp is done with the previous tile's values
    StageTile<kHeadDim>(sh.v, kv, kv.values, g, t0, mask);
    WaitCopies<1>();  // this thread's keys
    __syncthreads();  // everyone's keys, and the queries
    if (first_tile) {
      for (int x = 0; x < 2; ++x) {
        if (rows[x].pos < 0) continue;
        const float scale = sh.q_scale[warp * 16 + lane / 4 + 8 * x];
        rows[x].inv_scale = 1.0f / scale;
        rows[x].factor = rows[x].hp->logit_scale * scale;
        const AttentionHeadParams& hp = *rows[x].hp;
        rows[x].plain = params.window_tokens == 0 && hp.window_tokens == 0 && hp.first_token_bias == 0.0f &&
                        hp.outside_span_bias == 0.0f && hp.reweight_beta == 1.0f;
      }
      first_tile = false;
    }
    const bool scored = warp_rows && t0 < warp_end;  // warp-uniform
    float s[kPrefillKeyBlocks][4] = {};
    unsigned in_set = 0;  // bit 4n + i: s[n][i]'s key is in its row's ACT set
    if (scored) {
      ScoreTile<kHeadDim>(s, sh.k, [&](int d0, uint32_t(&a)[4]) {
        LoadMatrices<false>(a, &sh.q[warp * 16 + lane % 16][d0 + lane / 16 * 8]);
      });
      // Sink keys meet the query turned at its cache slot: their blocks'
      // scores again, from those queries (straight from global memory: only
      // the first tiles have sink keys).
      if (a.sink_q != nullptr) {
#pragma unroll
        for (int n = 0; n < kPrefillKeyBlocks; ++n) {
          if (t0 + 8 * n < params.sink_tokens) SinkScores<kHeadDim>(s[n], a.sink_q, rows, sh.k, t0, n, params.sink_tokens);
        }
      }
      // Logits, each row's tile maximum, then its weights.
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const PrefillRow& row = rows[x];
        const bool reweights = kTwoSums && row.pos >= 0 && row.hp->reweight_beta != 1.0f;
        float tile_max = -INFINITY;
        if (row.plain && t0 + kPrefillKeys - 1 <= row.pos) {
          // Every key of the tile seen, none biased: the scaled scores (most
          // tiles of a dense prompt).
#pragma unroll
          for (int n = 0; n < kPrefillKeyBlocks; ++n) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              s[n][2 * x + c] *= row.factor;
              tile_max = fmaxf(tile_max, s[n][2 * x + c]);
            }
          }
        } else {
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
        const float new_m = fmaxf(m[x], tile_max);
        // Nothing seen yet: the weights are zeros and there is nothing to rescale.
        const float rescale = new_m == -INFINITY ? 1.0f : __expf(m[x] - new_m);
        m[x] = new_m;
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
        sum_set[x] = sum_set[x] * rescale + set;
        sum_rest[x] = sum_rest[x] * rescale + rest;
#pragma unroll
        for (int n = 0; n < kColBlocks; ++n) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            o_rest[n][2 * x + c] *= rescale;
            if constexpr (kTwoSums) o_set[n][2 * x + c] *= rescale;
          }
        }
      }
    }
    __syncthreads();  // every warp is done with the keys
    const int32_t next = tile_at(t0 + kPrefillKeys);
    if (next < end) {
      mask = TileLoadMask<kHeadDim>(params, first.query_pos, g, group, next, end);
      StageTile<kHeadDim>(sh.k, kv, kv.keys, g, next, mask);
    } else {
      CommitCopies();  // an empty group: the wait below counts the same
    }
    WaitCopies<1>();  // this thread's values
    __syncthreads();  // everyone's
    if (scored) {
      // Keys 16i to 16i + 15 are score blocks 2i and 2i + 1, whose
      // accumulator pairs are the A fragment's pairs as they lie; the
      // weights are rounded to fp16 as the CPU kernel's.
      auto weights = [&](int i, bool set, uint32_t(&pa)[4]) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int n = 2 * i + r / 2, at = 2 * (r % 2);
          float pair[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const bool member = in_set >> (4 * n + at + c) & 1u;
            pair[c] = member == set ? s[n][at + c] : 0.0f;
          }
          pa[r] = PackHalves(pair[0], pair[1]);
        }
      };
      AddValues<kHeadDim>(o_rest, sh.v, [&](int i, uint32_t(&pa)[4]) { weights(i, false, pa); });
      if constexpr (kTwoSums) {
        AddValues<kHeadDim>(o_set, sh.v, [&](int i, uint32_t(&pa)[4]) { weights(i, true, pa); });
      }
    }
    t0 = next;
  }

  // A row's sums are spread over its quad; the virtual sink joins the
  // denominator and ACT's scales apply, as the decode kernel's merge of a
  // single split.
#pragma unroll
  for (int x = 0; x < 2; ++x) {
#pragma unroll
    for (int d = 1; d < 4; d *= 2) {
      sum_set[x] += __shfl_xor_sync(0xffffffffu, sum_set[x], d);
      sum_rest[x] += __shfl_xor_sync(0xffffffffu, sum_rest[x], d);
    }
    const PrefillRow& row = rows[x];
    if (row.pos < 0) continue;
    const float top = fmaxf(m[x], row.hp->virtual_sink_logit);
    const float w = m[x] == -INFINITY ? 0.0f : __expf(m[x] - top);
    const SoftmaxTotals totals = CloseSoftmax(*row.hp, top, sum_set[x] * w, sum_rest[x] * w);
    float* out = a.out + row.q_row * kHeadDim;
#pragma unroll
    for (int n = 0; n < kColBlocks; ++n) {
      float2 pair;
      pair.x = totals.Output(kTwoSums ? o_set[n][2 * x] * w : 0.0f, o_rest[n][2 * x] * w);
      pair.y = totals.Output(kTwoSums ? o_set[n][2 * x + 1] * w : 0.0f, o_rest[n][2 * x + 1] * w);
      *reinterpret_cast<float2*>(out + 8 * n + 2 * quad) = pair;
    }
    if (a.lse != nullptr && quad == 0) a.lse[row.q_row] = totals.lse;
  }
}

// Block (tile, g): the longest tiles (a chunk's last) first, so that the
// short ones fill the end of the grid.
template <int kHeadDim>
__global__ void __launch_bounds__(kPrefillThreads) PrefillKernel(PrefillAttentionArgs a) {
  const PrefillTile tile = a.tiles[gridDim.x - 1 - blockIdx.x];
  const int g = blockIdx.y, group = a.n_q_heads / a.n_kv_heads;
  const SequenceAttentionParams& params = LayerParams(a.entries[tile.first_entry], a.layer);
  bool reweights = false;
  for (int i = 0; i < group; ++i) reweights |= params.heads[g * group + i].reweight_beta != 1.0f;
  if (reweights) {  // block-uniform
    PrefillBlock<kHeadDim, true>(a, tile, g, group);
  } else {
    PrefillBlock<kHeadDim, false>(a, tile, g, group);
  }
}

// PrefillAttentionCuda's checks and launch, through `launch(name, kernel,
// grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunPrefillAttention(const PrefillAttentionArgs& a, const Launcher& launch) {
  if (a.n_tiles < 0 || a.n_kv_heads < 1 || a.n_q_heads % a.n_kv_heads != 0 ||
      a.n_q_heads / a.n_kv_heads > kPrefillMaxGroup || a.n_kv_heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillAttentionCuda: tiles=", a.n_tiles, " heads ", a.n_q_heads,
                                                   "/", a.n_kv_heads, " (at most ", kPrefillMaxGroup,
                                                   " query heads per KV head)"));
  }
  if (a.n_tiles == 0) return absl::OkStatus();
  if (a.entries == nullptr || a.tiles == nullptr || a.q == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("PrefillAttentionCuda: null pointer");
  }
  const dim3 grid(a.n_tiles, a.n_kv_heads), block(kPrefillThreads);
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
