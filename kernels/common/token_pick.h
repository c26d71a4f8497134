// The backend-side token draw (LogitsWanted::kLastPick), shared by the CPU
// reference and the GPU kernel: the sequence's logit edits first, then
// greedy at temperature 0; else the scaled
// logits x = (logit - max) / temperature, weights e^x (0 below -50, as the
// host sampler), then top_k, top_p and min_p as cuts on x, and the draw at
// `uniform` of the kept mass walked in token-id order.
//
// The cuts are found by bisection (kPickBisections halvings of [-50, 0]), so
// tokens within ~3e-6 of a cut in x stay together: top_k keeps the k most
// likely and any tied with the k-th. These are the host Sampler's rules,
// not its bits: its draws walk a sorted order, these the id order.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/half.h"

namespace attnserve {

inline constexpr int kMaxPickTop = 20;

// A sequence's logit processing of one token, applied before the pick as
// LogitsProcessor::Apply does: l = rep(l + bias) - frequency - presence,
// rep dividing a positive logit by `repetition` and multiplying a negative
// one; `mask` makes it -inf (min_tokens).
struct LogitEdit {
  int32_t token = 0;
  float bias = 0.0f;
  float repetition = 1.0f;
  float frequency = 0.0f;
  float presence = 0.0f;
  bool mask = false;
};

ATTN_HD float EditLogit(float l, const LogitEdit& e) {
  if (e.mask) return -INFINITY;
  l += e.bias;
  if (e.repetition != 1.0f) l = l > 0.0f ? l / e.repetition : l * e.repetition;
  l -= e.frequency;
  l -= e.presence;
  return l;
}

struct TokenPick {
  float temperature = 0.0f;  // 0: the largest logit
  int32_t top_k = 0;         // 0: no cut
  float top_p = 1.0f;
  float min_p = 0.0f;
  double uniform = 0.0;      // in [0, 1): the sequence's draw for this token
  // Also the token's log-probability under the row's log-softmax (before
  // temperature and cuts, as the host Sampler reports it), and the
  // top_logprobs most likely tokens' (most likely first, lower id on a tie;
  // -inf logits never among them).
  bool logprobs = false;
  int32_t top_logprobs = 0;  // <= kMaxPickTop
  // The logit processing to apply first; one edit per token.
  const LogitEdit* edits = nullptr;
  int32_t n_edits = 0;
  // Out.
  int32_t token = 0;
  float logprob = 0.0f;
  int32_t n_top = 0;
  int32_t top_tokens[kMaxPickTop] = {};
  float top_logprob_values[kMaxPickTop] = {};
};

// A pick's results (token, logprob, top tokens) into `to`, its settings kept.
inline void CopyPickResults(const TokenPick& from, TokenPick& to) {
  to.token = from.token;
  to.logprob = from.logprob;
  to.n_top = from.n_top;
  for (int k = 0; k < kMaxPickTop; ++k) {
    to.top_tokens[k] = from.top_tokens[k];
    to.top_logprob_values[k] = from.top_logprob_values[k];
  }
}

// The order of the most likely tokens: the larger logit first, the lower id
// on a tie.
ATTN_HD bool PickBefore(float a, int32_t a_id, float b, int32_t b_id) { return a > b || (a == b && a_id < b_id); }

inline constexpr float kPickMinX = -50.0f;
inline constexpr int kPickBisections = 24;

// A scaled logit's weight; NaN weighs nothing.
ATTN_HD float PickWeight(float x) { return x >= kPickMinX ? expf(x) : 0.0f; }

ATTN_HD float ScaledLogit(float logit, float max, float inv_t) { return (logit - max) * inv_t; }

// The cut of a sampled pick: tokens with scaled logit x >= cut are drawn
// from. Top-k's cut is the largest x keeping k tokens, then top-p's the
// largest keeping that mass, each by bisection over [kPickMinX, 0]; min-p
// raises it to log(min_p). count_from(cut) and mass_from(cut) count and
// weigh (PickWeight) the row's tokens with x >= cut: a loop on the host, a
// block's sums on the device, where every thread calls this alike.
template <typename Count, typename Mass>
ATTN_HD float PickCut(const TokenPick& p, int64_t vocab, Count count_from, Mass mass_from) {
  float cut = kPickMinX;
  if (p.top_k > 0 && p.top_k < vocab) {
    float lo = cut, hi = 0.0f;
    for (int i = 0; i < kPickBisections; ++i) {
      const float mid = 0.5f * (lo + hi);
      if (count_from(mid) >= static_cast<float>(p.top_k)) lo = mid; else hi = mid;
    }
    cut = lo;
  }
  if (p.top_p < 1.0f) {
    const float target = p.top_p * mass_from(cut);
    float lo = cut, hi = 0.0f;
    for (int i = 0; i < kPickBisections; ++i) {
      const float mid = 0.5f * (lo + hi);
      if (mass_from(mid) >= target) lo = mid; else hi = mid;
    }
    cut = lo;
  }
  if (p.min_p > 0.0f) cut = fmaxf(cut, logf(p.min_p));
  return cut;
}

}  // namespace attnserve
