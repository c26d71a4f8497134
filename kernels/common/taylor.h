// The second-order Taylor feature map of exp (BASED), shared by the CPU and
// CUDA kernels of the linear attention mode (DESIGN.md §4, `linear`):
//   φ(x) = [1, x_a, x_a x_b w_ab (a <= b)],  w_aa = 1/√2, w_ab = 1 (a < b)
// so that φ(q)·φ(k) = 1 + q·k + (q·k)²/2, the Taylor expansion of exp(q·k)
// to second order, with the symmetric half of x⊗x (d(d+1)/2 features, not
// d²). The query is scaled by the head's logit scale before the map.
#pragma once

#include <cstdint>

#include "kernels/common/half.h"

namespace attnserve {

ATTN_HD int TaylorFeatureCount(int head_dim) { return 1 + head_dim + head_dim * (head_dim + 1) / 2; }

// phi[TaylorFeatureCount(d)] = φ(x).
ATTN_HD void TaylorFeatures(const float* x, int d, float* phi) {
  const float inv_sqrt2 = 0.70710678118654752f;
  phi[0] = 1.0f;
  for (int a = 0; a < d; ++a) phi[1 + a] = x[a];
  int f = 1 + d;
  for (int a = 0; a < d; ++a) {
    phi[f++] = x[a] * x[a] * inv_sqrt2;
    for (int b = a + 1; b < d; ++b) phi[f++] = x[a] * x[b];
  }
}

// Feature f of φ (TaylorFeatures' order) as a product x[a] x[b] times a
// weight: a = b = -1 for the constant, b = -1 for x[a] alone.
struct TaylorTerm {
  int a, b;
};
ATTN_HD TaylorTerm TaylorTermOf(int d, int f) {
  if (f == 0) return {-1, -1};
  if (f <= d) return {f - 1, -1};
  int i = f - 1 - d;  // index into the pairs a <= b, row a holding d - a of them
  int a = 0;
  while (i >= d - a) i -= d - a++;
  return {a, a + i};
}
ATTN_HD float TaylorTermValue(const float* x, TaylorTerm t) {
  if (t.a < 0) return 1.0f;
  if (t.b < 0) return x[t.a];
  return t.a == t.b ? x[t.a] * x[t.a] * 0.70710678118654752f : x[t.a] * x[t.b];
}

// φ(x)[f] alone, for a GPU thread that owns feature f.
ATTN_HD float TaylorFeature(const float* x, int d, int f) { return TaylorTermValue(x, TaylorTermOf(d, f)); }

// 1 + x + x²/2: a folded key's weight, for q·k scaled to x.
ATTN_HD float Taylor2(float x) { return 1.0f + x + 0.5f * x * x; }

}  // namespace attnserve
