// Quest's page selection kernel (quest_select.h), as a header:
// quest_select.cu launches it on a stream, and the CUDA tests also run it on
// the host through the emulator (tests/cuda_emu), where each includer gets
// its own copy (an unnamed namespace).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
#include "kernels/common/quest.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/quest_select.h"

namespace attnserve {
namespace {

constexpr int kThreads = 256;
constexpr uint32_t kNotCandidate = 0;  // below every candidate's key (see OrderedKey)

// Float -> uint32 with the same order, shifted up by one so that 0 is free
// for non-candidates.
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  const uint32_t b = __float_as_uint(x);
  const uint32_t key = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return key == 0xffffffffu ? key : key + 1;
}

// Exclusive prefix sum over the block (thread order). Called by all threads.
__device__ int32_t BlockExclusiveScan(int32_t v, int32_t* scratch) {
  __syncthreads();
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (unsigned off = 1; off < kThreads; off <<= 1) {
    const int32_t add = threadIdx.x >= off ? scratch[threadIdx.x - off] : 0;
    __syncthreads();
    scratch[threadIdx.x] += add;
    __syncthreads();
  }
  return scratch[threadIdx.x] - v;
}

// Block (g, seq). Each thread owns a contiguous chunk of pages, so that
// "earlier page" is thread order then chunk order.
__global__ void QuestSelectKernel(QuestSelectArgs a, uint32_t* keys_ws) {
  __shared__ int32_t scratch[kThreads];
  const int g = blockIdx.x, seq = blockIdx.y;
  const QuestSelectSequence& s = a.seqs[seq];
  if (a.layer < s.first_layer) return;  // the whole block: s is the block's
  const PagedKv kv = s.kv.AtLayer(a.layer);
  const int32_t ps = kv.page_size;
  const int32_t own = s.query_pos / ps;
  const int32_t chunk = (own + kThreads - 1) / kThreads;
  const int32_t p_begin = min(own, static_cast<int32_t>(threadIdx.x) * chunk);
  const int32_t p_end = min(own, p_begin + chunk);
  KeyRange* ranges = s.key_ranges + static_cast<int64_t>(g) * (s.budget_pages + 1);
  uint32_t* keys = keys_ws + (static_cast<int64_t>(seq) * a.n_kv_heads + g) * a.max_pages;

  int32_t mine = 0;
  for (int32_t p = p_begin; p < p_end; ++p) {
    mine += QuestPageVisible(p, ps, s.sink_tokens, s.window_tokens, s.query_pos);
  }
  const int32_t candidates = BlockTreeSum(mine, scratch);
  if (candidates <= s.budget_pages) {
    if (threadIdx.x == 0) {
      ranges[0] = {0, s.query_pos + 1};
      s.num_key_ranges[g] = 1;
    }
    return;
  }

  // Scores: the group's queries against each candidate's bounds, as floats.
  const int group = a.n_q_heads / a.n_kv_heads;
  const float* q = a.q + (static_cast<int64_t>(seq) * a.n_q_heads + g * group) * a.head_dim;
  for (int32_t p = p_begin; p < p_end; ++p) {
    uint32_t key = kNotCandidate;
    if (QuestPageVisible(p, ps, s.sink_tokens, s.window_tokens, s.query_pos)) {
      const int64_t bounds = kv.Slice(g, p) * a.head_dim;
      key = OrderedKey(QuestPageScore(q, group, a.head_dim, kv.key_min + bounds, kv.key_max + bounds));
    }
    keys[p] = key;
  }

  // The budget-th largest key T: the largest T with at least budget keys >= T.
  uint32_t lo = 1, hi = 0xffffffffu;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo + 1) / 2;
    int32_t count = 0;
    for (int32_t p = p_begin; p < p_end; ++p) count += keys[p] >= mid;
    if (BlockTreeSum(count, scratch) >= s.budget_pages) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const uint32_t t = lo;
  int32_t above = 0, equal = 0;
  for (int32_t p = p_begin; p < p_end; ++p) {
    above += keys[p] > t;
    equal += keys[p] == t;
  }
  const int32_t equal_wanted = s.budget_pages - BlockTreeSum(above, scratch);
  int32_t equal_before = BlockExclusiveScan(equal, scratch);
  // Selected pages (and the own page) become key 1, the rest 0.
  for (int32_t p = p_begin; p < p_end; ++p) {
    const bool tie = keys[p] == t && equal_before++ < equal_wanted;
    keys[p] = keys[p] > t || tie ? 1u : 0u;
  }
  __syncthreads();

  // Ranges: one per run of selected pages; the own page's ends at query_pos + 1.
  const auto selected = [&](int32_t p) { return p == own || (p < own && keys[p] == 1u); };
  int32_t starts = 0;
  for (int32_t p = p_begin; p < p_end; ++p) starts += selected(p) && (p == 0 || !selected(p - 1));
  // The own page starts a run when the page before it is not selected.
  const bool own_starts = threadIdx.x == kThreads - 1 && (own == 0 || !selected(own - 1));
  int32_t index = BlockExclusiveScan(starts + own_starts, scratch);
  const auto emit = [&](int32_t p) {
    int32_t q_end = p;
    while (q_end + 1 <= own && selected(q_end + 1)) ++q_end;
    ranges[index++] = {p * ps, q_end == own ? s.query_pos + 1 : (q_end + 1) * ps};
  };
  for (int32_t p = p_begin; p < p_end; ++p) {
    if (selected(p) && (p == 0 || !selected(p - 1))) emit(p);
  }
  if (own_starts) emit(own);
  if (threadIdx.x == kThreads - 1) s.num_key_ranges[g] = index;
}

// QuestSelectCuda's checks and launches, each launch through
// `launch(name, kernel, grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunQuestSelect(const QuestSelectArgs& a, void* workspace, size_t workspace_bytes,
                            const Launcher& launch) {
  if (a.n_seqs < 0 || a.max_pages < 0 || a.n_kv_heads < 1 || a.head_dim < 1 || a.n_q_heads % a.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("QuestSelectCuda: n_seqs=", a.n_seqs, " max_pages=", a.max_pages,
                                                   " heads ", a.n_q_heads, "/", a.n_kv_heads));
  }
  if (a.n_seqs == 0) return absl::OkStatus();
  if (a.seqs == nullptr || a.q == nullptr) return absl::InvalidArgumentError("QuestSelectCuda: null pointer");
  if (workspace_bytes < QuestSelectWorkspaceBytes(a.n_seqs, a.n_kv_heads, a.max_pages)) {
    return absl::InvalidArgumentError(absl::StrCat("QuestSelectCuda: workspace of ", workspace_bytes,
                                                   " bytes is short"));
  }
  for (int32_t i = 0; i < a.n_seqs; i += kMaxGridYZ) {
    // A chunk's sequences, their query rows and their workspace.
    QuestSelectArgs chunk = a;
    chunk.seqs = a.seqs + i;
    chunk.n_seqs = std::min(kMaxGridYZ, a.n_seqs - i);
    chunk.q = a.q + static_cast<int64_t>(i) * a.n_q_heads * a.head_dim;
    uint32_t* keys = static_cast<uint32_t*>(workspace) + static_cast<int64_t>(i) * a.n_kv_heads * a.max_pages;
    if (absl::Status st = launch("QuestSelectKernel", QuestSelectKernel, dim3(a.n_kv_heads, chunk.n_seqs),
                                 dim3(kThreads), 0, chunk, keys);
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace attnserve
