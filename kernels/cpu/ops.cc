#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#ifndef ATTNSERVE_KERNELS_CPU_OPS_SHARED
#define ATTNSERVE_KERNELS_CPU_OPS_SHARED
namespace attnserve::ops_detail {

// cos/sin of each rotated pair for one position, computed exactly as ggml's
// rope cache does (float angle advanced by repeated multiplication, float
// cosf/sinf) so that large positions round the same way as in llama.cpp.
// Written interleaved: cos[2i] = cos[2i+1] = cos(theta_i), and
// sin[2i] = -sin(theta_i), sin[2i+1] = +sin(theta_i).
inline void RopeTable(int32_t pos, const RopeParams& p, float* cos, float* sin) {
  const float theta_scale = std::pow(p.base, -2.0f / static_cast<float>(p.rotary_dim));
  float theta = static_cast<float>(pos);
  for (int i = 0; i < p.rotary_dim; i += 2) {
    const float angle = p.freq_scale * theta;
    const float c = std::cos(angle);
    const float s = std::sin(angle);
    cos[i] = c;
    cos[i + 1] = c;
    sin[i] = -s;
    sin[i + 1] = s;
    theta *= theta_scale;
  }
}

}  // namespace attnserve::ops_detail
#endif  // ATTNSERVE_KERNELS_CPU_OPS_SHARED

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/ops.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void RmsNormImpl(const float* x, const float* weight, float* y, int64_t rows, int64_t n, float eps) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    // Two accumulators hide the FMA latency.
    auto sum0 = hn::Zero(d), sum1 = hn::Zero(d);
    int64_t i = 0;
    for (; i + 2 * N <= n; i += 2 * N) {
      const auto a = hn::LoadU(d, xr + i), b = hn::LoadU(d, xr + i + N);
      sum0 = hn::MulAdd(a, a, sum0);
      sum1 = hn::MulAdd(b, b, sum1);
    }
    for (; i + N <= n; i += N) {
      const auto a = hn::LoadU(d, xr + i);
      sum0 = hn::MulAdd(a, a, sum0);
    }
    float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(sum0, sum1)));
    for (; i < n; ++i) sum += xr[i] * xr[i];
    const float scale = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
    const auto vscale = hn::Set(d, scale);
    i = 0;
    for (; i + N <= n; i += N) {
      hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, xr + i), vscale), hn::LoadU(d, weight + i)), d, yr + i);
    }
    for (; i < n; ++i) yr[i] = xr[i] * scale * weight[i];
  }
}

void RopeImpl(float* x, const int32_t* positions, int64_t rows, int n_heads, const RopeParams& p) {
  const hn::ScalableTag<float> d;
  const int N = static_cast<int>(hn::Lanes(d));
  std::vector<float> cos(p.rotary_dim), sin(p.rotary_dim);
  for (int64_t r = 0; r < rows; ++r) {
    ops_detail::RopeTable(positions[r], p, cos.data(), sin.data());
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + (r * n_heads + h) * p.head_dim;
      int i = 0;
      // Pairs never straddle a vector because N is even; a single-lane
      // target has no partner lane and takes the scalar loop.
      if (N > 1) {
        for (; i + N <= p.rotary_dim; i += N) {
          const auto v = hn::LoadU(d, xh + i);
          const auto swapped = hn::Reverse2(d, v);
          const auto out = hn::MulAdd(swapped, hn::LoadU(d, sin.data() + i), hn::Mul(v, hn::LoadU(d, cos.data() + i)));
          hn::StoreU(out, d, xh + i);
        }
      }
      for (; i < p.rotary_dim; i += 2) {
        const float x0 = xh[i], x1 = xh[i + 1];
        xh[i] = x0 * cos[i] + x1 * sin[i];
        xh[i + 1] = x1 * cos[i + 1] + x0 * sin[i + 1];
      }
    }
  }
}

void SwiGluImpl(const float* gate, const float* up, float* out, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto one = hn::Set(d, 1.0f);
  // Highway's Exp is only defined up to ~88; beyond it silu(g) is 0 anyway.
  const auto limit = hn::Set(d, 88.0f);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(d, gate + i);
    const auto e = hn::Exp(d, hn::Min(hn::Neg(g), limit));
    hn::StoreU(hn::Mul(hn::Div(g, hn::Add(one, e)), hn::LoadU(d, up + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

float SoftmaxImpl(float* x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto vmax = hn::Set(d, -INFINITY);
  int64_t i = 0;
  for (; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(d, x + i));
  float max = hn::GetLane(hn::MaxOfLanes(d, vmax));
  for (; i < n; ++i) max = std::max(max, x[i]);

  const auto vm = hn::Set(d, max);
  auto vsum = hn::Zero(d);
  i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, x + i), vm));
    hn::StoreU(e, d, x + i);
    vsum = hn::Add(vsum, e);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, vsum));
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }

  const float inv = 1.0f / sum;
  const auto vinv = hn::Set(d, inv);
  i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vinv), d, x + i);
  for (; i < n; ++i) x[i] *= inv;
  return max;
}

void AddInPlaceImpl(float* y, const float* x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Add(hn::LoadU(d, y + i), hn::LoadU(d, x + i)), d, y + i);
  for (; i < n; ++i) y[i] += x[i];
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnserve {

HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(RopeImpl);
HWY_EXPORT(SwiGluImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(AddInPlaceImpl);

void RmsNorm(const float* x, const float* weight, float* y, int64_t rows, int64_t n, float eps) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, weight, y, rows, n, eps);
}

void Rope(float* x, const int32_t* positions, int64_t rows, int n_heads, const RopeParams& p) {
  HWY_DYNAMIC_DISPATCH(RopeImpl)(x, positions, rows, n_heads, p);
}

void SwiGlu(const float* gate, const float* up, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(SwiGluImpl)(gate, up, out, n);
}

float Softmax(float* x, int64_t n) { return HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n); }

void AddInPlace(float* y, const float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(AddInPlaceImpl)(y, x, n); }

void RmsNormReference(const float* x, const float* weight, float* y, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[r * n + i]) * x[r * n + i];
    const float scale = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * scale * weight[i];
  }
}

void RopeReference(float* x, const int32_t* positions, int64_t rows, int n_heads, const RopeParams& p) {
  std::vector<float> cos(p.rotary_dim), sin(p.rotary_dim);
  for (int64_t r = 0; r < rows; ++r) {
    ops_detail::RopeTable(positions[r], p, cos.data(), sin.data());
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + (r * n_heads + h) * p.head_dim;
      for (int i = 0; i < p.rotary_dim; i += 2) {
        const double c = cos[i], s = sin[i + 1];
        const double x0 = xh[i], x1 = xh[i + 1];
        xh[i] = static_cast<float>(x0 * c - x1 * s);
        xh[i + 1] = static_cast<float>(x0 * s + x1 * c);
      }
    }
  }
}

void SwiGluReference(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

float SoftmaxReference(float* x, int64_t n) {
  float max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max = std::max(max, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(static_cast<double>(x[i]) - max) / sum);
  return max;
}

}  // namespace attnserve
#endif  // HWY_ONCE
