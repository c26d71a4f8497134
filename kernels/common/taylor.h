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

// 1 + x + x²/2: a folded key's weight, for q·k scaled to x.
ATTN_HD float Taylor2(float x) { return 1.0f + x + 0.5f * x * x; }

}  // namespace attnserve
