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
#include "kernels/cuda/prefill_tile.cuh"
#include "kernels/cuda/shared_memory.cuh"
#include "kernels/cuda/tensor_core.cuh"

namespace attnserve {
namespace {

// The power of two a query row whose largest |element| is `largest` is
// divided by to stay well inside fp16 (2^14, leaving room for its cache-slot
// twin); 1 for every row a model not overflowing fp16 writes.
__device__ __forceinline__ float QueryScale(float largest) {
  if (!(largest < INFINITY)) return 1.0f;  // Inf or NaN: as the fp32 math spoils it
  int exponent = 0;
  frexpf(largest, &exponent);  // largest < 2^exponent
  return exponent > 14 ? ldexpf(1.0f, exponent - 14) : 1.0f;
}

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

// Stages the tile's query rows scaled and rounded to fp16 (as the CPU
// kernel rounds them), zeros for rows without a query, a warp a row.
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

// One pass of block (tile, g) over the keys, the queries staged. Each warp
// holds 16 rows' scores and value sums in registers (FlashAttention-2): per
// 64-key tile, scores on the tensor cores, each row's hooks and online
// softmax on its lanes (a quad of lanes per row), the weights fed back as
// the next product's input. The next tile's keys are copied in while the
// weights are found and the values summed, the values while the scores
// are. ACT's value sums over a head's key set and over the rest are two
// passes, the same but for the keys they sum (`set_pass`): the first writes
// the rest's share of each output, the second adds the set's.
template <int kHeadDim>
__device__ void AttendKeys(const PrefillAttentionArgs& a, const PrefillTile& tile, int g, int group, bool set_pass) {
  using Shared = PrefillShared<kHeadDim>;
  constexpr int kColBlocks = kHeadDim / 8;
  Shared& sh = *reinterpret_cast<Shared*>(DynamicShared());
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, quad = lane % 4;
  const DecodeSequence& first = a.entries[tile.first_entry];
  const SequenceAttentionParams& params = LayerParams(first, a.layer);
  const PagedKv kv = first.kv.AtLayer(a.layer);
  const int n_rows = tile.n_queries * group;
  const int32_t end = a.entries[tile.first_entry + tile.n_queries - 1].query_pos + 1;
  // The warp's rows see no key past their last query's (a warp without rows
  // sees none).
  const int32_t warp_end =
      warp * 16 < n_rows ? a.entries[tile.first_entry + min(warp * 16 + 15, n_rows - 1) / group].query_pos + 1 : 0;
  PrefillRow rows[2];
  for (int x = 0; x < 2; ++x) rows[x] = TileRow(a, tile, g, group, warp * 16 + lane / 4 + 8 * x);

  // Whole key tiles behind every window the tile's queries have are skipped
  // (a streaming sequence at a million tokens reads sinks + window).
  const KeyRange hidden = HiddenKeys(params, g * group, group, first.query_pos);
  const int32_t skip_begin = (hidden.begin + kPrefillKeys - 1) / kPrefillKeys * kPrefillKeys;
  const int32_t skip_end = hidden.end / kPrefillKeys * kPrefillKeys;
  auto tile_at = [&](int32_t t0) { return t0 == skip_begin && skip_end > skip_begin ? skip_end : t0; };

  RowSums sums;
  float o[kColBlocks][4] = {};
  int32_t t0 = tile_at(0);
  int at = 0;  // cache_rows[at] maps tile t0
  if (t0 < end) {
    MapTileRows(sh.cache_rows[0], kv, params, first.query_pos, g, group, t0, end);
    __syncthreads();  // the first tile's rows, and the queries
    for (int x = 0; x < 2; ++x) {
      if (rows[x].pos < 0) continue;
      const float scale = sh.q_scale[warp * 16 + lane / 4 + 8 * x];
      rows[x].inv_scale = 1.0f / scale;
      rows[x].factor = rows[x].hp->logit_scale * scale;
      rows[x].whole_from = PlainKeysFrom(params, *rows[x].hp, rows[x].pos);
    }
    StageTile<kHeadDim>(sh.k, kv.keys, sh.cache_rows[0]);
  }
  for (; t0 < end;) {
    __syncthreads();  // every warp is done with the previous tile's values
    StageTile<kHeadDim>(sh.v, kv.values, sh.cache_rows[at]);
    // The next tile's rows, mapped while this thread's keys land.
    const int32_t next = tile_at(t0 + kPrefillKeys);
    if (next < end) MapTileRows(sh.cache_rows[at ^ 1], kv, params, first.query_pos, g, group, next, end);
    WaitCopies<1>();  // this thread's keys
    __syncthreads();  // everyone's keys, and the next tile's rows
    const bool scored = t0 < warp_end;  // warp-uniform
    float s[kPrefillKeyBlocks][4] = {};
    if (scored) {
      ScoreTile<kHeadDim>(s, sh.k, [&](int d0, uint32_t(&qa)[4]) {
        LoadMatrices<false>(qa, &sh.q[warp * 16 + lane % 16][d0 + lane / 16 * 8]);
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
    }
    __syncthreads();  // every warp is done with the keys
    if (next < end) {
      StageTile<kHeadDim>(sh.k, kv.keys, sh.cache_rows[at ^ 1]);
    } else {
      CommitCopies();  // an empty group: the wait below counts the same
    }
    unsigned in_set = 0;
    if (scored) in_set = SoftmaxTile<kHeadDim>(s, rows, params, t0, sums, o);
    WaitCopies<1>();  // this thread's values
    __syncthreads();  // everyone's
    // The set's pass sums nothing where no key of the warp's rows is in a set.
    if (scored && (!set_pass || __ballot_sync(0xffffffffu, in_set != 0u) != 0u)) {
      // Keys 16i to 16i + 15 are score blocks 2i and 2i + 1, whose
      // accumulator pairs are the A fragment's pairs as they lie; the
      // weights (of this pass's keys, against the running maximum) are
      // rounded to fp16.
      AddValues<kHeadDim>(o, sh.v, [&](int i, uint32_t(&pa)[4]) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int n = 2 * i + r / 2, col = 2 * (r % 2);
          float pair[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const bool member = in_set >> (4 * n + col + c) & 1u;
            pair[c] = member == set_pass ? s[n][col + c] : 0.0f;
          }
          pa[r] = PackHalves(pair[0], pair[1]);
        }
      });
    }
    t0 = next;
    at ^= 1;
  }

  // A row's sums are spread over its quad; the virtual sink joins the
  // denominator and ACT's scales apply, as the decode kernel's merge of a
  // single split.
#pragma unroll
  for (int x = 0; x < 2; ++x) {
#pragma unroll
    for (int d = 1; d < 4; d *= 2) {
      sums.set[x] += __shfl_xor_sync(0xffffffffu, sums.set[x], d);
      sums.rest[x] += __shfl_xor_sync(0xffffffffu, sums.rest[x], d);
    }
    const PrefillRow& row = rows[x];
    // The set's pass adds nothing to the rows of heads that do not reweight.
    if (row.pos < 0 || (set_pass && row.hp->reweight_beta == 1.0f)) continue;
    const float m = sums.m[x];
    const float top = fmaxf(m, row.hp->virtual_sink_logit);
    const float w = m == -INFINITY ? 0.0f : __expf(m - top);
    const SoftmaxTotals totals = CloseSoftmax(*row.hp, top, sums.set[x] * w, sums.rest[x] * w);
    const float weight = totals.Weight(set_pass) * w;
    float2* out = reinterpret_cast<float2*>(a.out + row.q_row * kHeadDim);
#pragma unroll
    for (int n = 0; n < kColBlocks; ++n) {
      float2 pair = make_float2(weight * o[n][2 * x], weight * o[n][2 * x + 1]);
      if (set_pass) {
        const float2 rest = out[4 * n + quad];
        pair.x += rest.x;
        pair.y += rest.y;
      }
      out[4 * n + quad] = pair;
    }
    if (a.lse != nullptr && quad == 0 && !set_pass) a.lse[row.q_row] = totals.lse;
  }
}

// Block (tile, g): the launch's last tiles first (a chunk's last are its
// longest), so that short ones fill the end of the grid.
template <int kHeadDim>
__global__ void __launch_bounds__(kPrefillThreads) PrefillKernel(PrefillAttentionArgs a) {
  const PrefillTile tile = a.tiles[gridDim.x - 1 - blockIdx.x];
  const int g = blockIdx.y, group = a.n_q_heads / a.n_kv_heads;
  StageQueries<kHeadDim>(a, tile, g, group, *reinterpret_cast<PrefillShared<kHeadDim>*>(DynamicShared()));
  AttendKeys<kHeadDim>(a, tile, g, group, false);
  const SequenceAttentionParams& params = LayerParams(a.entries[tile.first_entry], a.layer);
  bool reweights = false;
  for (int i = 0; i < group; ++i) reweights |= params.heads[g * group + i].reweight_beta != 1.0f;
  if (reweights) AttendKeys<kHeadDim>(a, tile, g, group, true);  // block-uniform
}

// PrefillAttentionCuda's checks and launch, through `launch(name, kernel,
// grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunPrefillAttention(const PrefillAttentionArgs& a, const Launcher& launch) {
  if (a.n_tiles < 0 || a.n_kv_heads < 1 || a.n_q_heads % a.n_kv_heads != 0 ||
      a.n_q_heads / a.n_kv_heads > kMaxQueryHeadsPerKvHead || a.n_kv_heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillAttentionCuda: tiles=", a.n_tiles, " heads ", a.n_q_heads,
                                                   "/", a.n_kv_heads, " (at most ", kMaxQueryHeadsPerKvHead,
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
