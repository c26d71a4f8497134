// The four attention-policy hooks of DESIGN.md §4 as plain parameters and
// per-element functions shared by the CPU and CUDA kernels.
//
// For query i of head h and visible key j:
//   s_ij = q_i·k_j * logit_scale + KeyBias(j)           (additive bias hook)
//   V(i) = HeadKeyVisible(i, j)                         (visible-set hook)
//   denominator += exp(virtual_sink_logit)              (virtual-sink hook)
//   p_ij scaled by ReweightScales(...)                  (post-softmax hook)
// and, for streaming positions=CACHE, q_i rotated at CacheSlot(i) instead of
// i for the sink keys j < sink_tokens (see CacheSlot).
// Policies are data: a dense request is the default-constructed value.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/half.h"

namespace attnserve {

// [begin, end) in token positions of the sequence.
struct KeyRange {
  int32_t begin = 0;
  int32_t end = 0;
};

// Whether `key` lies in one of ranges[0, n) (sorted, disjoint): a binary
// search for the first range ending after it (Quest's selection has up to
// budget / page_size + 1 ranges).
ATTN_HD bool InRanges(const KeyRange* ranges, int32_t n, int32_t key) {
  int32_t lo = 0, hi = n;
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (ranges[mid].end <= key) lo = mid + 1; else hi = mid;
  }
  return lo < n && key >= ranges[lo].begin;
}

// One query head of one layer of one sequence.
struct AttentionHeadParams {
  float logit_scale = 0.0f;          // 1/sqrt(head_dim) divided by the head's temperature
  float first_token_bias = 0.0f;     // added to s_i0 (zero_tuning: ln gamma)
  float outside_span_bias = 0.0f;    // added to prompt keys outside the spans (emphasis: ln alpha)
  float virtual_sink_logit = -INFINITY;  // exp(logit) joins the denominator; -inf = none
  float reweight_beta = 1.0f;        // ACT: p_ij *= beta on the head's key set; 1 = off
  int32_t reweight_keys_begin = 0;   // the head's key set: SequenceAttentionParams::reweight_keys
  int32_t reweight_keys_size = 0;    //   [begin, begin + size), sorted positions
  // DuoAttention's streaming heads: on top of the sequence's visible set,
  // the head sees only keys < sink_tokens and > i - window_tokens;
  // window_tokens == 0 leaves the head alone.
  int32_t sink_tokens = 0;
  int32_t window_tokens = 0;
};

// One layer of one sequence.
struct SequenceAttentionParams {
  const AttentionHeadParams* heads = nullptr;  // [n_q_heads]
  // Visible set: causal, minus keys in (sink_tokens, i - window_tokens];
  // window_tokens == 0 keeps every key.
  int32_t sink_tokens = 0;
  int32_t window_tokens = 0;
  // Emphasis spans: sorted, disjoint, inside [0, prompt_tokens).
  const KeyRange* spans = nullptr;
  int32_t num_spans = 0;
  int32_t prompt_tokens = 0;
  const int32_t* reweight_keys = nullptr;
};

// Key j is a sink or inside the window of query i (window 0: every key).
ATTN_HD bool InSinksOrWindow(int32_t sink_tokens, int32_t window_tokens, int32_t query_pos, int32_t key_pos) {
  return window_tokens == 0 || key_pos < sink_tokens || key_pos > query_pos - window_tokens;
}

// The sequence's visible set (causal, sink, window).
ATTN_HD bool KeyVisible(const SequenceAttentionParams& p, int32_t query_pos, int32_t key_pos) {
  return key_pos <= query_pos && InSinksOrWindow(p.sink_tokens, p.window_tokens, query_pos, key_pos);
}

// V(i) of one head: the sequence's set and the head's own restriction.
ATTN_HD bool HeadKeyVisible(const SequenceAttentionParams& p, const AttentionHeadParams& h, int32_t query_pos,
                            int32_t key_pos) {
  return KeyVisible(p, query_pos, key_pos) && InSinksOrWindow(h.sink_tokens, h.window_tokens, query_pos, key_pos);
}

// Streaming positions=CACHE (StreamingLLM): the RoPE position of the query
// at `query_pos` is its slot in the kept cache, i.e. its rank among the keys
// it sees: query_pos while nothing is evicted, sink_tokens + window_tokens - 1
// after. Keys keep the rotation of their original position: a window key's
// slot offset to the query equals its original offset (the window is
// contiguous and ends at the query), and a sink key's slot is its position,
// so only the sink keys need the query rotated at this slot instead
// (AttentionQueries::sink_q of the CPU kernel).
ATTN_HD int32_t CacheSlot(const SequenceAttentionParams& p, int32_t query_pos) {
  if (p.window_tokens == 0) return query_pos;
  const int32_t last_slot = p.sink_tokens + p.window_tokens - 1;
  return query_pos < last_slot ? query_pos : last_slot;
}

// Keys [begin, end) that no query at `query_pos` or later sees with any of
// the query heads [first_head, first_head + n_heads): behind the sequence's
// window, or behind the window of every one of the heads (DuoAttention's
// streaming heads of one KV group). The longer of the two bands; empty
// (begin == end) when neither hides anything.
ATTN_HD KeyRange HiddenKeys(const SequenceAttentionParams& p, int first_head, int n_heads, int32_t query_pos) {
  KeyRange band{0, 0};
  if (p.window_tokens > 0 && query_pos - p.window_tokens + 1 > p.sink_tokens) {
    band = {p.sink_tokens, query_pos - p.window_tokens + 1};
  }
  int32_t begin = 0, end = query_pos + 1;
  for (int h = first_head; h < first_head + n_heads; ++h) {
    const AttentionHeadParams& hp = p.heads[h];
    if (hp.window_tokens == 0) return band;  // a head that sees every key
    begin = begin > hp.sink_tokens ? begin : hp.sink_tokens;
    const int32_t head_end = query_pos - hp.window_tokens + 1;
    end = end < head_end ? end : head_end;
  }
  if (end - begin > band.end - band.begin) band = {begin, end};
  return band;
}

ATTN_HD bool InSpans(const SequenceAttentionParams& p, int32_t key_pos) {
  return InRanges(p.spans, p.num_spans, key_pos);
}

ATTN_HD float KeyBias(const SequenceAttentionParams& p, const AttentionHeadParams& h, int32_t key_pos) {
  float b = key_pos == 0 ? h.first_token_bias : 0.0f;
  if (h.outside_span_bias != 0.0f && key_pos < p.prompt_tokens && !InSpans(p, key_pos)) {
    b += h.outside_span_bias;
  }
  return b;
}

ATTN_HD bool InReweightSet(const SequenceAttentionParams& p, const AttentionHeadParams& h, int32_t key_pos) {
  const int32_t* keys = p.reweight_keys + h.reweight_keys_begin;
  int32_t lo = 0, hi = h.reweight_keys_size;
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (keys[mid] < key_pos) lo = mid + 1; else hi = mid;
  }
  return lo < h.reweight_keys_size && keys[lo] == key_pos;
}

// Where head h's plain keys at `query_pos` start: every key from there to
// the query is visible, has no bias and is outside ACT's key set, so that
// its logit is q·k times the logit scale and nothing else (the prefill
// kernel's whole tiles). Past every window's start, the first token's bias
// and the prompt's outside-span bias; INT32_MAX where the head reweights.
ATTN_HD int32_t PlainKeysFrom(const SequenceAttentionParams& p, const AttentionHeadParams& h, int32_t query_pos) {
  if (h.reweight_beta != 1.0f) return INT32_MAX;
  const int32_t starts[4] = {h.first_token_bias != 0.0f ? 1 : 0,
                             p.window_tokens > 0 ? query_pos - p.window_tokens + 1 : 0,
                             h.window_tokens > 0 ? query_pos - h.window_tokens + 1 : 0,
                             h.outside_span_bias != 0.0f ? p.prompt_tokens : 0};
  int32_t from = 0;
  for (const int32_t start : starts) from = start > from ? start : from;
  return from;
}

// Post-softmax reweighting from the two accumulators' masses (both relative
// to the same running maximum): keys in the set get `in_set`, the others
// `rest`, so that the removed mass (1-beta)·P_S goes to the other keys in
// proportion to their probability. The virtual sink's mass is untouched.
struct ReweightScales {
  float in_set;
  float rest;
};
ATTN_HD ReweightScales ComputeReweightScales(float beta, float mass_in_set, float mass_rest) {
  if (beta == 1.0f || mass_in_set <= 0.0f || mass_rest <= 0.0f) return {1.0f, 1.0f};
  return {beta, 1.0f + (1.0f - beta) * mass_in_set / mass_rest};
}

// The end of one query head's online softmax (the GPU kernels'): from the
// summed weights of ACT's key set and of the rest, both against the maximum
// `m` (>= the virtual sink's logit), the denominator with the virtual sink
// in it, the log denominator and ACT's scales.
struct SoftmaxTotals {
  float den = 0.0f;
  float lse = -INFINITY;
  ReweightScales scales{1.0f, 1.0f};

  // The output column from the two value sums (zero when nothing is seen).
  ATTN_HD float Output(float acc_set, float acc_rest) const {
    return den > 0.0f ? (scales.in_set * acc_set + scales.rest * acc_rest) / den : 0.0f;
  }
  // What the set's (or the rest's) value sums are multiplied by in Output,
  // for a kernel that divides once a row rather than once a column.
  ATTN_HD float Weight(bool in_set) const { return den > 0.0f ? (in_set ? scales.in_set : scales.rest) / den : 0.0f; }
};
ATTN_HD SoftmaxTotals CloseSoftmax(const AttentionHeadParams& h, float m, float sum_set, float sum_rest) {
  SoftmaxTotals t;
  const float sink = h.virtual_sink_logit == -INFINITY ? 0.0f : expf(h.virtual_sink_logit - m);
  t.den = sum_set + sum_rest + sink;
  if (t.den > 0.0f) t.lse = m + logf(t.den);
  t.scales = ComputeReweightScales(h.reweight_beta, sum_set, sum_rest);
  return t;
}

}  // namespace attnserve
