// The decode attention kernels (paged_decode.h), as a header: paged_decode.cu
// launches them on a stream, and the CUDA tests also run them on the host
// through the emulator (tests/cuda_emu), where each includer gets its own
// copy (an unnamed namespace).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_warp.cuh"
#include "kernels/cuda/paged_decode.h"
#include "kernels/cuda/shared_memory.cuh"

namespace attnserve {
namespace {


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

constexpr int kTileKeys = kWarp;  // a key per lane when scoring
constexpr int kStages = 2;        // tiles in shared memory: one read while the next is copied

// The staged tiles of a block's keys and values. A row is padded by 16
// bytes, so that lanes reading their own key rows 16 bytes at a time
// (DotHalf) meet no other lane of their quarter-warp on a bank, and the
// rows stay 16-byte aligned for the copies. The block's queries follow in
// dynamic shared memory: [group][kHeadDim] floats, then the cache-slot ones.
template <int kHeadDim>
struct DecodeTiles {
  static constexpr int kLd = kHeadDim + 8;  // halves a row
  __half k[kStages][kTileKeys][kLd];
  __half v[kStages][kTileKeys][kLd];
};

template <int kHeadDim>
size_t DecodeSharedBytes(int group) {
  return sizeof(DecodeTiles<kHeadDim>) + 2 * static_cast<size_t>(group) * kHeadDim * sizeof(float);
}

// Block (split, g, seq), one warp per query head of KV head g. The split's
// keys and values go through shared memory in tiles of 32, each copied once
// for the whole group (coalesced 16-byte copies, the next tile's in flight
// while this one is read), and only where some head of the group reads them:
// keys behind every window (pages given back) or outside Quest's ranges are
// never touched. Each lane scores one key of a tile, the warp updates the
// online softmax, then every lane accumulates its head_dim / 32 value
// columns over the tile.
template <int kHeadDim>
__global__ void __launch_bounds__(kMaxQueryHeadsPerKvHead* kWarp) DecodePartialKernel(DecodeAttentionArgs a, Workspace ws,
                                                                        int32_t n_splits) {
  constexpr int kCols = kHeadDim / kWarp;            // value columns per lane, as half2 pairs: kCols / 2
  constexpr int kChunks = kHeadDim * 2 / 16;         // 16-byte copies a row
  constexpr int kTileChunks = kTileKeys * kChunks;   // of keys or of values, a tile
  const int split = blockIdx.x, g = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int group = a.n_q_heads / a.n_kv_heads;
  const DecodeSequence s = AtLayer(a.seqs[seq], a.layer);
  const int32_t begin = split * kDecodeSplitKeys;
  const int32_t end = min(s.query_pos + 1, begin + kDecodeSplitKeys);
  if (begin >= end) return;  // past this sequence's keys: the merge reads only its own splits

  unsigned char* shared_bytes = DynamicShared();
  auto& tiles = *reinterpret_cast<DecodeTiles<kHeadDim>*>(shared_bytes);
  auto* q_sh = reinterpret_cast<float(*)[kHeadDim]>(shared_bytes + sizeof(DecodeTiles<kHeadDim>));
  float* q = q_sh[warp];
  float* sink_q = q_sh[group + warp];
  // Each head's keys of a staged tile, a bit per key; their union is copied.
  __shared__ uint32_t head_reads[kStages][kMaxQueryHeadsPerKvHead];

  const int h = g * group + warp;
  const int64_t q_off = (static_cast<int64_t>(QueryRow(s, seq)) * a.n_q_heads + h) * kHeadDim;
  for (int c = lane; c < kHeadDim; c += kWarp) {
    q[c] = a.q[q_off + c];
    sink_q[c] = a.sink_q != nullptr ? a.sink_q[q_off + c] : a.q[q_off + c];
  }
  __syncwarp();

  const AttentionHeadParams& hp = s.params.heads[h];
  const bool reweights = hp.reweight_beta != 1.0f;
  // This warp's head's keys of the tile at t0, a bit per lane.
  auto reads_of = [&](int32_t t0) {
    const int32_t j = t0 + lane;
    return __ballot_sync(0xffffffffu, j < end && KeyRead(s, hp, g, j));
  };
  // Every thread: the copies of the tile at t0 into `stage`, as one group.
  auto copy_tile = [&](int32_t t0, int stage) {
    uint32_t any = 0;
    for (int w = 0; w < group; ++w) any |= head_reads[stage][w];
    for (int i = threadIdx.x; i < 2 * kTileChunks; i += blockDim.x) {
      const bool key = i < kTileChunks;
      const int kk = i % kTileChunks / kChunks, c = i % kChunks;
      if ((any >> kk & 1u) == 0) continue;
      const fp16_t* row = s.kv.Row(key ? s.kv.keys : s.kv.values, g, t0 + kk);
      __half* dst = key ? tiles.k[stage][kk] : tiles.v[stage][kk];
      CopyAsync16(dst + c * 8, row + c * 8);
    }
    CommitCopies();
  };

  const int n_tiles = (end - begin + kTileKeys - 1) / kTileKeys;
  uint32_t next_reads = reads_of(begin);
  if (lane == 0) head_reads[0][warp] = next_reads;
  __syncthreads();
  copy_tile(begin, 0);
  WarpSoftmax<kCols> sm;
  for (int t = 0; t < n_tiles; ++t) {
    const int32_t t0 = begin + t * kTileKeys;
    const int stage = t % kStages;
    const uint32_t reads = next_reads;
    const bool more = t + 1 < n_tiles;  // block-uniform
    if (more) {
      next_reads = reads_of(t0 + kTileKeys);
      if (lane == 0) head_reads[(t + 1) % kStages][warp] = next_reads;
    }
    // Every head's bits of the next tile are in, and every warp is done
    // with the stage it goes into (read two tiles ago).
    __syncthreads();
    if (more) {
      copy_tile(t0 + kTileKeys, (t + 1) % kStages);
      WaitCopies<1>();
    } else {
      WaitCopies<0>();
    }
    __syncthreads();  // this tile's copies, by every thread, have landed

    const int32_t j = t0 + lane;
    float logit = -INFINITY;
    bool in_set = false;
    if (reads >> lane & 1u) {
      const float dot = DotHalf<kHeadDim>(j < s.params.sink_tokens ? sink_q : q, tiles.k[stage][lane]);
      logit = dot * hp.logit_scale + KeyBias(s.params, hp, j);
      in_set = reweights && InReweightSet(s.params, hp, j);
    }
    float p;
    if (!sm.AddTile(logit, in_set, &p)) continue;
    const int n = min(kTileKeys, end - t0);
    for (int kk = 0; kk < n; ++kk) {
      const float pk = __shfl_sync(0xffffffffu, p, kk);
      const bool set_k = __shfl_sync(0xffffffffu, in_set, kk);
      if (pk == 0.0f) continue;  // warp-uniform: pk is the same in every lane; keys not read have 0
      sm.AddValue(reinterpret_cast<const __half2*>(tiles.v[stage][kk]), lane, pk, set_k);
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

template <int kHeadDim, typename Launcher>
absl::Status LaunchDecode(const DecodeAttentionArgs& a, void* workspace, const Launcher& launch) {
  const int32_t n_splits = NumSplits(a.max_tokens);
  const Workspace ws = Carve(workspace, a.n_seqs, a.n_q_heads, n_splits);
  const int group = a.n_q_heads / a.n_kv_heads;
  if (absl::Status st = launch("DecodePartialKernel", DecodePartialKernel<kHeadDim>,
                               dim3(n_splits, a.n_kv_heads, a.n_seqs), dim3(group * kWarp),
                               DecodeSharedBytes<kHeadDim>(group), a, ws, n_splits);
      !st.ok()) {
    return st;
  }
  return launch("DecodeMergeKernel", DecodeMergeKernel<kHeadDim>, dim3(a.n_q_heads, a.n_seqs), dim3(kHeadDim), 0,
                a, ws, n_splits);
}

// DecodeAttentionCuda's checks and launches, each launch through
// `launch(name, kernel, grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunDecodeAttention(const DecodeAttentionArgs& a, void* workspace, size_t workspace_bytes,
                                const Launcher& launch) {
  if (a.n_seqs < 0 || a.max_tokens < 1 || a.n_kv_heads < 1 || a.n_q_heads % a.n_kv_heads != 0 ||
      a.n_q_heads / a.n_kv_heads > kMaxQueryHeadsPerKvHead) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: n_seqs=", a.n_seqs, " max_tokens=",
                                                   a.max_tokens, " heads ", a.n_q_heads, "/", a.n_kv_heads,
                                                   " (at most ", kMaxQueryHeadsPerKvHead, " query heads per KV head)"));
  }
  if (a.n_seqs == 0) return absl::OkStatus();
  if (a.seqs == nullptr || a.q == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("DecodeAttentionCuda: null pointer");
  }
  if (workspace_bytes < DecodeAttentionWorkspaceBytes(a.n_seqs, a.n_q_heads, a.head_dim, a.max_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: workspace of ", workspace_bytes,
                                                   " bytes is short"));
  }
  switch (a.head_dim) {
    case 64:
      return LaunchDecode<64>(a, workspace, launch);
    case 128:
      return LaunchDecode<128>(a, workspace, launch);
    default:
      return absl::InvalidArgumentError(absl::StrCat("DecodeAttentionCuda: head_dim ", a.head_dim,
                                                     " (64 or 128 only)"));
  }
}

}  // namespace
}  // namespace attnserve
