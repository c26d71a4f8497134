// The backend-side token draw (LogitsWanted::kLastPick), shared by the CPU
// reference and the GPU kernel: greedy at temperature 0; else the scaled
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
  // Out.
  int32_t token = 0;
  float logprob = 0.0f;
  int32_t n_top = 0;
  int32_t top_tokens[kMaxPickTop] = {};
  float top_logprob_values[kMaxPickTop] = {};
};

// The order of the most likely tokens: the larger logit first, the lower id
// on a tie.
ATTN_HD bool PickBefore(float a, int32_t a_id, float b, int32_t b_id) { return a > b || (a == b && a_id < b_id); }

inline constexpr float kPickMinX = -50.0f;
inline constexpr int kPickBisections = 24;

// A scaled logit's weight; NaN weighs nothing.
ATTN_HD float PickWeight(float x) { return x >= kPickMinX ? expf(x) : 0.0f; }

ATTN_HD float ScaledLogit(float logit, float max, float inv_t) { return (logit - max) * inv_t; }

}  // namespace attnserve
