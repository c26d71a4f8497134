// Per-target SIMD pieces of the CPU attention kernel (attention.cc), each
// in the order of the reference's (llama.cpp's) corresponding operation:
// horizontal sums, the fp16 rounding of q and p, the softmax's vector exp,
// key/value conversion, the logit dot products and the value accumulation.
// Included by attention.cc once per target.

// Per-target include guard.
#if defined(ATTNSERVE_KERNELS_CPU_ATTENTION_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNSERVE_KERNELS_CPU_ATTENTION_SIMD_INL_H_
#undef ATTNSERVE_KERNELS_CPU_ATTENTION_SIMD_INL_H_
#else
#define ATTNSERVE_KERNELS_CPU_ATTENTION_SIMD_INL_H_
#endif

#include <cmath>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/common/ggml_types.h"
#include "kernels/common/half.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace attention_simd {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

#if HWY_TARGET != HWY_SCALAR
// Adds the upper half of v to its lower half until 128 bits remain: the
// order of _mm512_reduce_add_ps and of the reference's 256-bit horizontal sum.
template <class D, class V>
HWY_INLINE auto FoldTo128(D d, V v) {
  if constexpr (hn::MaxLanes(d) <= 4) {
    return v;
  } else {
    const hn::Half<D> dh;
    return FoldTo128(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  }
}
#endif

// Sum of the lanes of v, folded by halves.
HWY_INLINE float FoldSum(DF d, VF v) {
#if HWY_TARGET == HWY_SCALAR
  return hn::GetLane(v);
#else
  const auto v4 = FoldTo128(d, v);
  alignas(16) float x[4];
  hn::Store(v4, hn::DFromV<decltype(v4)>(), x);
  return (x[0] + x[2]) + (x[1] + x[3]);
#endif
}

// out4[i] = FoldSum of the i-th argument times scale, the last two folds of
// the four done as one transpose-add.
HWY_INLINE void FoldSum4(DF d, VF a, VF b, VF c, VF e, float scale, float* out4) {
#if HWY_TARGET == HWY_SCALAR
  const VF v[4] = {a, b, c, e};
  for (int i = 0; i < 4; ++i) out4[i] = hn::GetLane(v[i]) * scale;
#else
  const auto a4 = FoldTo128(d, a), b4 = FoldTo128(d, b), c4 = FoldTo128(d, c), e4 = FoldTo128(d, e);
  const hn::DFromV<decltype(a4)> d4;
  const hn::RepartitionToWide<hn::RebindToUnsigned<decltype(d4)>> d64;
  // Lanes (a0+a2, b0+b2, a1+a3, b1+b3), likewise for c and e.
  const auto ab = hn::BitCast(d64, hn::Add(hn::InterleaveLower(d4, a4, b4), hn::InterleaveUpper(d4, a4, b4)));
  const auto ce = hn::BitCast(d64, hn::Add(hn::InterleaveLower(d4, c4, e4), hn::InterleaveUpper(d4, c4, e4)));
  const auto sums =
      hn::Add(hn::BitCast(d4, hn::InterleaveLower(d64, ab, ce)), hn::BitCast(d4, hn::InterleaveUpper(d64, ab, ce)));
  hn::StoreU(hn::Mul(sums, hn::Set(d4, scale)), d4, out4);
#endif
}

// ggml_vec_dot_f16's order is followed for one-query calls on x86 AVX2 and
// AVX-512 (its GGML_F16_STEP = 4 vectors); elsewhere the batched order.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
constexpr bool kVecDotOrder = true;
#else
constexpr bool kVecDotOrder = false;
#endif

// The lanes of v summed as ggml_vec_dot_f16 reduces its last accumulator:
// _mm512_reduce_add_ps (by halves) or, for 256 bits, the halves then two
// horizontal adds.
HWY_INLINE float VecDotFold(DF d, VF v) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  const auto v4 = FoldTo128(d, v);
  alignas(16) float x[4];
  hn::Store(v4, hn::DFromV<decltype(v4)>(), x);
  if constexpr (hn::MaxLanes(DF()) == 8) return (x[0] + x[1]) + (x[2] + x[3]);
  return (x[0] + x[2]) + (x[1] + x[3]);
#else
  return FoldSum(d, v);
#endif
}

// x rounded to the nearest fp16 value, ties to even (F16C's vcvtps2ph, which
// the reference uses to convert q and p), returned as float.
HWY_INLINE VF RoundToFp16(DF d, VF x) {
  const hn::RebindToUnsigned<DF> du;
  const VF a = hn::Abs(x);
  // Normal fp16: drop 13 mantissa bits, rounding to even.
  const auto bits = hn::BitCast(du, a);
  const auto odd = hn::And(hn::ShiftRight<13>(bits), hn::Set(du, 1u));
  const VF normal = hn::BitCast(d, hn::And(hn::Add(bits, hn::Add(hn::Set(du, 0xfffu), odd)), hn::Set(du, ~0x1fffu)));
  // Subnormal fp16: multiples of 2^-24, the spacing of floats in [0.5, 1).
  const VF half = hn::Set(d, 0.5f);
  VF r = hn::IfThenElse(hn::Lt(a, hn::Set(d, 0x1p-14f)), hn::Sub(hn::Add(a, half), half), normal);
  r = hn::IfThenElse(hn::Ge(a, hn::Set(d, 65520.0f)), hn::Set(d, INFINITY), r);
  return hn::CopySignToAbs(r, x);
}

// exp(x) for x <= 0 as the reference's vectorised expf computes it: n =
// round(x / ln 2), a polynomial in the remainder b, times 2^n. Its AVX-512
// build adds the polynomial's 1 before scaling (vscalefps); the AVX2 and NEON
// builds compute k + k·j with k = 2^n. Results below 2^-126 are flushed to 0:
// they cannot change a probability that sums with the maximum's 1 and rounds
// to fp16.
HWY_INLINE VF ExpNonPositive(DF d, VF x) {
  const hn::RebindToUnsigned<DF> du;
  const VF shifter = hn::Set(d, 0x1.8p23f);
  const VF z = hn::MulAdd(x, hn::Set(d, 0x1.715476p+0f), shifter);
  const VF n = hn::Sub(z, shifter);
  const VF b = hn::NegMulAdd(n, hn::Set(d, 0x1.7f7d1cp-20f), hn::NegMulAdd(n, hn::Set(d, 0x1.62e4p-1f), x));
  const VF u = hn::Mul(b, b);
  const VF poly = hn::MulAdd(hn::MulAdd(hn::Set(d, 0x1.0e4020p-7f), b, hn::Set(d, 0x1.573e2ep-5f)), u,
                             hn::MulAdd(hn::Set(d, 0x1.555e66p-3f), b, hn::Set(d, 0x1.fffdb6p-2f)));
  // 2^n from the integer n held in z's low mantissa bits.
  const VF k = hn::BitCast(d, hn::Add(hn::ShiftLeft<23>(hn::BitCast(du, z)), hn::Set(du, 0x3f800000u)));
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  const VF e = hn::Mul(hn::MulAdd(poly, u, hn::MulAdd(hn::Set(d, 0x1.ffffecp-1f), b, hn::Set(d, 1.0f))), k);
#else
  const VF j = hn::MulAdd(poly, u, hn::Mul(hn::Set(d, 0x1.ffffecp-1f), b));
  const VF e = hn::MulAdd(k, j, k);
#endif
  return hn::IfThenZeroElse(hn::Lt(n, hn::Set(d, -126.0f)), e);
}

// Converts `n` rows of KV head kv_head from position `first` on (keys, or
// values with base = kv.values) to floats padded with zeros to hdp.
HWY_INLINE void ConvertRows(const fp16_t* base, const PagedKv& kv, int kv_head, int32_t first, int n, int hdp,
                            float* dst) {
  const DF d;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const int N = static_cast<int>(hn::Lanes(d));
  const int hd = kv.head_dim;
  int32_t slot = first % kv.page_size;
  const fp16_t* src = kv.Row(base, kv_head, first);
  for (int j = 0; j < n; ++j) {
    if (j > 0 && ++slot == kv.page_size) {
      slot = 0;
      src = kv.Row(base, kv_head, first + j);
    } else if (j > 0) {
      src += hd;
    }
    float* row = dst + static_cast<int64_t>(j) * hdp;
    int c = 0;
    for (; c + N <= hd; c += N) {
      hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(src + c))), d, row + c);
    }
    for (; c < hd; ++c) row[c] = Fp16ToFloat(src[c]);
    for (; c < hdp; ++c) row[c] = 0.0f;
  }
}

// s[j] = (q · k_j) * scale for the first n keys of the block: one accumulator
// per lane over the chunks of head_dim, then folded (the reference's matmul
// kernel), then scaled (its softmax).
HWY_INLINE void Dots(const float* q, const float* keys, int n, int hdp, float scale, float* s) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k = keys + static_cast<int64_t>(j) * hdp;
    VF a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (int c = 0; c < hdp; c += N) {
      const VF qv = hn::LoadU(d, q + c);
      a0 = hn::MulAdd(qv, hn::LoadU(d, k + c), a0);
      a1 = hn::MulAdd(qv, hn::LoadU(d, k + hdp + c), a1);
      a2 = hn::MulAdd(qv, hn::LoadU(d, k + 2 * hdp + c), a2);
      a3 = hn::MulAdd(qv, hn::LoadU(d, k + 3 * hdp + c), a3);
    }
    FoldSum4(d, a0, a1, a2, a3, scale, s + j);
  }
  for (; j < n; ++j) {
    const float* k = keys + static_cast<int64_t>(j) * hdp;
    VF a = hn::Zero(d);
    for (int c = 0; c < hdp; c += N) a = hn::MulAdd(hn::LoadU(d, q + c), hn::LoadU(d, k + c), a);
    s[j] = FoldSum(d, a) * scale;
  }
}

// Dots for a one-query call, in ggml_vec_dot_f16's order: four accumulators
// over steps of 4N elements, folded pairwise, then the lanes; the remaining
// elements' float products added in double.
HWY_INLINE void VecDots(const float* q, const float* keys, int n, int hd, int hdp, float scale, float* s) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  const int np = hd / (4 * N) * (4 * N);
  for (int j = 0; j < n; ++j) {
    const float* k = keys + static_cast<int64_t>(j) * hdp;
    VF a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (int c = 0; c < np; c += 4 * N) {
      a0 = hn::MulAdd(hn::LoadU(d, k + c), hn::LoadU(d, q + c), a0);
      a1 = hn::MulAdd(hn::LoadU(d, k + c + N), hn::LoadU(d, q + c + N), a1);
      a2 = hn::MulAdd(hn::LoadU(d, k + c + 2 * N), hn::LoadU(d, q + c + 2 * N), a2);
      a3 = hn::MulAdd(hn::LoadU(d, k + c + 3 * N), hn::LoadU(d, q + c + 3 * N), a3);
    }
    double sum = VecDotFold(d, hn::Add(hn::Add(a0, a2), hn::Add(a1, a3)));
    for (int c = np; c < hd; ++c) {
      const float prod = k[c] * q[c];
      sum += static_cast<double>(prod);
    }
    s[j] = static_cast<float>(sum) * scale;
  }
}

// acc += Σ p[j] v_j over j = first, first + stride, ... < n, in that order.
// Four head_dim vectors at a time keep independent FMA chains in registers.
HWY_INLINE void AccumulateValues(const float* p, const float* values, int first, int n, int stride, int hdp,
                                 float* acc) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  int c = 0;
  for (; c + 4 * N <= hdp; c += 4 * N) {
    VF a0 = hn::LoadU(d, acc + c), a1 = hn::LoadU(d, acc + c + N);
    VF a2 = hn::LoadU(d, acc + c + 2 * N), a3 = hn::LoadU(d, acc + c + 3 * N);
    for (int j = first; j < n; j += stride) {
      const VF pj = hn::Set(d, p[j]);
      const float* v = values + static_cast<int64_t>(j) * hdp + c;
      a0 = hn::MulAdd(pj, hn::LoadU(d, v), a0);
      a1 = hn::MulAdd(pj, hn::LoadU(d, v + N), a1);
      a2 = hn::MulAdd(pj, hn::LoadU(d, v + 2 * N), a2);
      a3 = hn::MulAdd(pj, hn::LoadU(d, v + 3 * N), a3);
    }
    hn::StoreU(a0, d, acc + c);
    hn::StoreU(a1, d, acc + c + N);
    hn::StoreU(a2, d, acc + c + 2 * N);
    hn::StoreU(a3, d, acc + c + 3 * N);
  }
  for (; c < hdp; c += N) {
    VF a = hn::LoadU(d, acc + c);
    for (int j = first; j < n; j += stride) {
      a = hn::MulAdd(hn::Set(d, p[j]), hn::LoadU(d, values + static_cast<int64_t>(j) * hdp + c), a);
    }
    hn::StoreU(a, d, acc + c);
  }
}

}  // namespace attention_simd
}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#endif  // ATTNSERVE_KERNELS_CPU_ATTENTION_SIMD_INL_H_
