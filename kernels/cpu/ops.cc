#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

// RmsNorm, Rope, SwiGlu and AddInPlace round exactly as llama.cpp's CPU ops
// (ggml built for the same machine) do, because a small model turns 1-ulp
// differences into different Q8 activations and, layers later, into logit
// differences of ~1:
//   rms_norm + mul: each x*x rounded to float, the squares added in order in
//     double, mean = float(sum / n), scale = 1 / sqrtf(mean + eps),
//     y = (x * scale) * w (two float products);
//   rope (normal mode): cos/sin from the float angle of its cache; for each
//     pair y0 = x0*cos - x1*sin, y1 = x0*sin + x1*cos with the x0 product
//     fused (FMA) and the x1 product rounded where the target has FMA;
//   swiglu: silu(g) * u with ggml's vectorised expf (its AVX-512 variant on
//     AVX3, its AVX2/SSE/NEON variant on the other SIMD targets), the tail of
//     a row (fewer than a vector) through libm's expf. ggml goes row by row;
//     SwiGlu sees rows * ffn values at once, which splits the same way when
//     the FFN width is a multiple of 16 (every usual width);
//   add: one float add.
// On targets without FMA (SSE4, SSSE3, scalar) the FMAs above become a
// rounded product and a sum, as a ggml built for such a CPU computes them.

#ifndef ATTNSERVE_KERNELS_CPU_OPS_SHARED
#define ATTNSERVE_KERNELS_CPU_OPS_SHARED
namespace attnserve::ops_detail {

// cos/sin of each rotated pair for one position, computed exactly as ggml's
// rope cache does (float angle advanced by repeated multiplication, float
// cosf/sinf) so that large positions round the same way as in llama.cpp.
// Written as the factors of the pair's two outputs, y = x0 * a + x1 * b:
// a[2i] = cos(theta_i), a[2i+1] = sin(theta_i), b[2i] = -sin(theta_i),
// b[2i+1] = cos(theta_i).
inline void RopeTable(int32_t pos, const RopeParams& p, float* a, float* b) {
  const float theta_scale = std::pow(p.base, -2.0f / static_cast<float>(p.rotary_dim));
  float theta = static_cast<float>(pos);
  for (int i = 0; i < p.rotary_dim; i += 2) {
    const float angle = p.freq_scale * theta;
    const float c = std::cos(angle);
    const float s = std::sin(angle);
    a[i] = c;
    a[i + 1] = s;
    b[i] = -s;
    b[i + 1] = c;
    theta *= theta_scale;
  }
}

// Σ x_i² of each of `rows` rows as ggml's rms_norm forms it: every square
// rounded to float, then added in index order to a double. The order is part
// of the result, so a row is one dependency chain; eight rows at a time keep
// eight chains in flight.
inline void SumSquares(const float* x, int64_t rows, int64_t n, double* sums) {
  constexpr int kChains = 8;
  int64_t r = 0;
  for (; r + kChains <= rows; r += kChains) {
    const float* xr = x + r * n;
    double s[kChains] = {};
    for (int64_t i = 0; i < n; ++i) {
      for (int k = 0; k < kChains; ++k) s[k] += static_cast<double>(xr[k * n + i] * xr[k * n + i]);
    }
    std::copy(s, s + kChains, sums + r);
  }
  for (; r < rows; ++r) {
    const float* xr = x + r * n;
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += static_cast<double>(xr[i] * xr[i]);
    sums[r] = s;
  }
}

// 1 / sqrt(mean + eps) from the double sum: the mean rounded to float first.
inline float RmsScale(double sum_sq, int64_t n, float eps) {
  const float mean = static_cast<float>(sum_sq / static_cast<double>(n));
  return 1.0f / std::sqrt(mean + eps);
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
  // Sums of a block of rows first (y may alias x), then their scaling.
  constexpr int64_t kBlock = 64;
  double sums[kBlock];
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t count = std::min(kBlock, rows - r0);
    ops_detail::SumSquares(x + r0 * n, count, n, sums);
    for (int64_t r = r0; r < r0 + count; ++r) {
      const float* xr = x + r * n;
      float* yr = y + r * n;
      const float scale = ops_detail::RmsScale(sums[r - r0], n, eps);
      const auto vscale = hn::Set(d, scale);
      int64_t i = 0;
      for (; i + N <= n; i += N) {
        hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, xr + i), vscale), hn::LoadU(d, weight + i)), d, yr + i);
      }
      for (; i < n; ++i) yr[i] = xr[i] * scale * weight[i];
    }
  }
}

#if HWY_TARGET != HWY_SCALAR
// Returns v, opaque to the optimizer: GCC (-ffp-contract=fast) would fuse the
// product that made v into a following add, a rounding ggml does not do.
template <class V>
HWY_INLINE V Rounded(V v) {
#if HWY_ARCH_X86 && (HWY_COMPILER_GCC || HWY_COMPILER_CLANG) && HWY_TARGET != HWY_EMU128
#if HWY_TARGET <= HWY_AVX3
  asm("" : "+v"(v.raw));
#else
  asm("" : "+x"(v.raw));
#endif
#endif
  return v;
}

// y = X0 * a + X1 * b for the pairs of one vector, X0 (X1) the even (odd)
// element of each pair in both of its lanes: the X0 product fused or not.
template <bool kFused, class D, class V = hn::Vec<D>>
HWY_INLINE V RotateVector(D d, V v, V a, V b) {
  const V x1b = Rounded(hn::Mul(hn::DupOdd(v), b));
  if constexpr (kFused) return hn::MulAdd(hn::DupEven(v), a, x1b);
  return hn::Add(Rounded(hn::Mul(hn::DupEven(v), a)), x1b);
}

// Rotates dims [begin, end) of one head: whole vectors, then the last pairs
// through a zero-padded vector with the same roundings.
template <bool kFused, class D>
HWY_INLINE void RotateRange(D d, float* xh, const float* a, const float* b, int begin, int end) {
  const int N = static_cast<int>(hn::Lanes(d));
  int i = begin;
  for (; i + N <= end; i += N) {
    hn::StoreU(RotateVector<kFused>(d, hn::LoadU(d, xh + i), hn::LoadU(d, a + i), hn::LoadU(d, b + i)), d, xh + i);
  }
  if (i == end) return;
  HWY_ALIGN float buf[hn::MaxLanes(d)] = {}, va[hn::MaxLanes(d)] = {}, vb[hn::MaxLanes(d)] = {};
  std::copy(xh + i, xh + end, buf);
  std::copy(a + i, a + end, va);
  std::copy(b + i, b + end, vb);
  hn::Store(RotateVector<kFused>(d, hn::Load(d, buf), hn::Load(d, va), hn::Load(d, vb)), d, buf);
  std::copy(buf, buf + (end - i), xh + i);
}

// Rotates the pairs of one head's first `count` dims (a multiple of 2) with
// a = (cos, sin) and b = (-sin, cos) from RopeTable. ggml's compiled loop
// fuses the x0 products in its vectorised body, four pairs at a time, and
// rounds both products in the scalar remainder of up to three pairs.
template <class D>
HWY_INLINE void RotatePairs(D d, float* xh, const float* a, const float* b, int count) {
  const int fused_end = count & ~7;
  RotateRange<true>(d, xh, a, b, 0, fused_end);
  RotateRange<false>(d, xh, a, b, fused_end, count);
}
#endif

void RopeImpl(float* x, const int32_t* positions, int64_t rows, int n_heads, const RopeParams& p) {
  std::vector<float> a(p.rotary_dim), b(p.rotary_dim);
  for (int64_t r = 0; r < rows; ++r) {
    ops_detail::RopeTable(positions[r], p, a.data(), b.data());
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + (r * n_heads + h) * p.head_dim;
#if HWY_TARGET == HWY_SCALAR
      // No FMA on this target (nor in ggml built for it): two rounded products.
      for (int i = 0; i < p.rotary_dim; i += 2) {
        const float x0 = xh[i], x1 = xh[i + 1];
        xh[i] = x0 * a[i] + x1 * b[i];
        xh[i + 1] = x0 * a[i + 1] + x1 * b[i + 1];
      }
#else
      RotatePairs(hn::ScalableTag<float>(), xh, a.data(), b.data(), p.rotary_dim);
#endif
    }
  }
}

#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
// exp(x) exactly as ggml's ggml_v_expf: n = round(x / ln 2) via the 1.5·2^23
// shifter, b = x - n·ln2 (in two FMA steps), a degree-5 polynomial in b and
// 2^n. Its AVX-512 variant adds the polynomial's 1 before scaling by 2^n
// (vscalefps, one rounding); the others compute k + k·j with k = 2^n and
// rebuild 2^n from two factors where |n| > 126. Beyond |n| > 192 both give
// 0 or infinity.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V GgmlExp(D d, V x) {
  const hn::RebindToUnsigned<D> du;
  const V shifter = hn::Set(d, 0x1.8p23f);
  const V z = hn::MulAdd(x, hn::Set(d, 0x1.715476p+0f), shifter);
  const V n = hn::Sub(z, shifter);
  const V b = hn::NegMulAdd(n, hn::Set(d, 0x1.7f7d1cp-20f), hn::NegMulAdd(n, hn::Set(d, 0x1.62e4p-1f), x));
  const V u = hn::Mul(b, b);
  const V poly = hn::MulAdd(hn::MulAdd(hn::Set(d, 0x1.0e4020p-7f), b, hn::Set(d, 0x1.573e2ep-5f)), u,
                            hn::MulAdd(hn::Set(d, 0x1.555e66p-3f), b, hn::Set(d, 0x1.fffdb6p-2f)));
  // 2^n from the integer n held in z's low mantissa bits (exact for |n| <= 126).
  const auto e = hn::ShiftLeft<23>(hn::BitCast(du, z));
  const V k = hn::BitCast(d, hn::Add(e, hn::Set(du, 0x3f800000u)));
  const V abs_n = hn::Abs(n);
  const auto big = hn::Gt(abs_n, hn::Set(d, 126.0f));
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  const V j = hn::MulAdd(poly, u, hn::MulAdd(hn::Set(d, 0x1.ffffecp-1f), b, hn::Set(d, 1.0f)));
  V res = hn::Mul(j, k);  // j·2^n, rounded once (also into the subnormals)
  if (HWY_UNLIKELY(!hn::AllFalse(d, big))) {
    // j·2^n as (j·2^h)·2^(n-h), h = floor(n/2): the first product is exact,
    // so the result is rounded once, as vscalefps rounds it.
    const hn::RebindToSigned<D> di;
    const auto ni = hn::ConvertTo(di, hn::IfThenElseZero(big, n));
    const auto h = hn::ShiftRight<1>(ni);
    const auto bias = hn::Set(di, 127);
    const V p1 = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(h, bias)));
    const V p2 = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::Sub(ni, h), bias)));
    res = hn::IfThenElse(big, hn::Mul(hn::Mul(j, p1), p2), res);
    const V inf_or_zero = hn::IfThenElseZero(hn::Gt(n, hn::Zero(d)), hn::Set(d, HUGE_VALF));
    res = hn::IfThenElse(hn::Gt(abs_n, hn::Set(d, 192.0f)), inf_or_zero, res);
  }
  return res;
#else
  const V j = hn::MulAdd(poly, u, hn::Mul(hn::Set(d, 0x1.ffffecp-1f), b));
  if (HWY_LIKELY(hn::AllFalse(d, big))) return hn::MulAdd(j, k, k);
  // s1·s2 = 2^n with both factors normal: s1 = 2^127 (n > 0) or 2^-125
  // (n <= 0), s1² the overflow or underflow beyond |n| > 192.
  const auto g = hn::IfThenElseZero(hn::RebindMask(du, hn::Le(n, hn::Zero(d))), hn::Set(du, 0x82000000u));
  const V s1 = hn::BitCast(d, hn::Add(g, hn::Set(du, 0x7f000000u)));
  const V s2 = hn::BitCast(d, hn::Sub(e, g));
  const V scaled = hn::IfThenElse(big, hn::Mul(hn::MulAdd(s2, j, s2), s1), hn::MulAdd(k, j, k));
  return hn::IfThenElse(hn::Gt(abs_n, hn::Set(d, 192.0f)), hn::Mul(s1, s1), scaled);
#endif
}
#endif

void SwiGluImpl(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto one = hn::Set(d, 1.0f);
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(d, gate + i);
    // 1 + e rounds e first: the product that makes e (AVX3) is not fused.
    const auto silu = hn::Div(g, hn::Add(one, Rounded(GgmlExp(d, hn::Sub(hn::Zero(d), g)))));
    hn::StoreU(hn::Mul(silu, hn::LoadU(d, up + i)), d, out + i);
  }
#endif
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
  std::vector<float> a(p.rotary_dim), b(p.rotary_dim);
  for (int64_t r = 0; r < rows; ++r) {
    ops_detail::RopeTable(positions[r], p, a.data(), b.data());
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + (r * n_heads + h) * p.head_dim;
      for (int i = 0; i < p.rotary_dim; i += 2) {
        const double c = a[i], s = a[i + 1];
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
