// Dot products of weight rows with up to four activation rows at a time
// (Highway, dispatched at run time). Quantized types use integer products as
// llama.cpp's x86 kernels do: u8 x i8 pairs summed to i16 (maddubs), then to
// i32 (madd), scaled per block in float. Highway 1.0.3 has no u8 x i8 pair
// product, so those kernels are AVX2 intrinsics on the AVX2 and AVX-512
// targets; the other targets dequantize to float and use the float kernel.
#include "kernels/cpu/matmul_dot.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/common/half.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_blocks.h"

// Also build AVX3_DL (AVX-512 VNNI): vpdpbusd does maddubs + madd in one.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/matmul_dot.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#undef ATTN_X86_INT
#undef ATTN_NATIVE_F16
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define ATTN_X86_INT 1
#define ATTN_NATIVE_F16 1
#else
#define ATTN_X86_INT 0
#define ATTN_NATIVE_F16 0  // Highway's emulated f16 conversion truncates
#endif

// Activation rows sharing one pass over a weight row: enough to turn the
// batched forward compute-bound, few enough to keep accumulators in registers.
constexpr int kMaxActRows = 4;

// Where a kernel finds its activation rows and stores its results.
struct Rows {
  const uint8_t* act;
  size_t act_stride;
  const float* scales;  // ActRows::scales of the first row
  int64_t scales_stride;
  float* y;
  int64_t y_stride;
};

// ------------------------------------------- float weights, F32 activations

template <GgmlType kType, class D>
HWY_INLINE hn::Vec<D> LoadWeights(D df, const void* w, int64_t i) {
  if constexpr (kType == GgmlType::kF32) {
    return hn::LoadU(df, static_cast<const float*>(w) + i);
  } else if constexpr (kType == GgmlType::kF16) {
    const hn::Rebind<hwy::float16_t, D> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, static_cast<const hwy::float16_t*>(w) + i));
  } else {
    const hn::Rebind<hwy::bfloat16_t, D> db;
    return hn::PromoteTo(df, hn::LoadU(db, static_cast<const hwy::bfloat16_t*>(w) + i));
  }
}

template <GgmlType kType>
HWY_INLINE float WeightAt(const void* w, int64_t i) {
  if constexpr (kType == GgmlType::kF32) return static_cast<const float*>(w)[i];
  if constexpr (kType == GgmlType::kF16) return Fp16ToFloat(static_cast<const fp16_t*>(w)[i]);
  return Bf16ToFloat(static_cast<const bf16_t*>(w)[i]);
}

template <GgmlType kType, int NB>
HWY_INLINE void DotFloatRows(const void* w, int64_t n, const Rows& r) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const float* a[NB];
  hn::Vec<decltype(df)> acc[NB];
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const float*>(r.act + b * r.act_stride);
    acc[b] = hn::Zero(df);
  }
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto wv = LoadWeights<kType>(df, w, i);
    for (int b = 0; b < NB; ++b) acc[b] = hn::MulAdd(wv, hn::LoadU(df, a[b] + i), acc[b]);
  }
  for (int b = 0; b < NB; ++b) {
    float sum = hn::GetLane(hn::SumOfLanes(df, acc[b]));
    for (int64_t j = i; j < n; ++j) sum += WeightAt<kType>(w, j) * a[b][j];
    r.y[b * r.y_stride] = sum;
  }
}

#if ATTN_X86_INT
// ------------------------------------------------ x86 integer dot products

HWY_INLINE __m256i LoadBytes(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

HWY_INLINE float F16(fp16_t h) { return _cvtsh_ss(h); }

// 16 bytes of nibble pairs as 32 quants: low nibbles (elements 0-15), then high.
HWY_INLINE __m256i Nibbles(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

// 0xFF in byte j where bit j of the 32-bit little-endian mask is set.
HWY_INLINE __m256i BitsToBytes(const uint8_t* qh) {
  uint32_t bits;
  memcpy(&bits, qh, sizeof(bits));
  const __m256i byte_of_bit = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), byte_of_bit);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

// Sums of 4 adjacent products u[i] * s[i] (u unsigned) as 8 int32. The i16
// pair sums of maddubs cannot saturate: |u| <= 128 and |s| <= 127.
HWY_INLINE __m256i DotU8I8(__m256i u, __m256i s) {
#if HWY_TARGET == HWY_AVX3_DL
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// The two fp16 fields a *_1 block starts with, [d, m], in lanes 0 and 1.
HWY_INLINE __m128 LeadingHalves(const void* block) {
  int32_t bits;
  memcpy(&bits, block, sizeof(bits));
  return _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
}

HWY_INLINE float HorizontalSum(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

HWY_INLINE float HorizontalSum(__m256 v) {
  return HorizontalSum(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

// The 32-element types, as 32 quants per block. Signed types give q in
// [-16, 15] (or [-128, 127] for Q8_0); the *_1 types give unsigned q and a
// min m, paired with the activation sums s of Q8_1.
struct Q4_0Kernel {
  using Block = BlockQ4_0;
  using Act = BlockQ8_0;
  static constexpr bool kSigned = true;
  static __m256i Quants(const Block& b) { return _mm256_sub_epi8(Nibbles(b.qs), _mm256_set1_epi8(8)); }
};
struct Q4_1Kernel {
  using Block = BlockQ4_1;
  using Act = BlockQ8_1;
  static constexpr bool kSigned = false;
  static __m256i Quants(const Block& b) { return Nibbles(b.qs); }
};
struct Q5_0Kernel {
  using Block = BlockQ5_0;
  using Act = BlockQ8_0;
  static constexpr bool kSigned = true;
  // q5 - 16 is the nibble with 0xF0 or'ed in (i.e. -16 added) where bit 5 is clear.
  static __m256i Quants(const Block& b) {
    return _mm256_or_si256(Nibbles(b.qs), _mm256_andnot_si256(BitsToBytes(b.qh), _mm256_set1_epi8(-16)));
  }
};
struct Q5_1Kernel {
  using Block = BlockQ5_1;
  using Act = BlockQ8_1;
  static constexpr bool kSigned = false;
  static __m256i Quants(const Block& b) {
    return _mm256_or_si256(Nibbles(b.qs), _mm256_and_si256(BitsToBytes(b.qh), _mm256_set1_epi8(16)));
  }
};
struct Q8_0Kernel {
  using Block = BlockQ8_0;
  using Act = BlockQ8_0;
  static constexpr bool kSigned = true;
  static __m256i Quants(const Block& b) { return LoadBytes(b.qs); }
};

// Accumulators of DotSmallRows for NB activation rows.
template <int NB>
struct SmallAcc {
  __m256 sum[NB];
  __m128 min[NB];  // lane 1: sum of m * s over the blocks (*_1 types)
};

template <class K, int NB>
HWY_INLINE void DotSmallRows(const void* wrow, int64_t n, const Rows& r) {
  using Act = typename K::Act;
  const int64_t nblocks = n / kQK;
  const auto* w = static_cast<const typename K::Block*>(wrow);
  const Act* a[NB];
  const float* a_scales[NB];  // [d, s] per block
  // Even and odd blocks go to separate accumulators: one dependent FMA per
  // block would bound a single activation row by the FMA latency. Every NB
  // sums in the same order, so a row's result does not depend on its batch.
  SmallAcc<NB> acc[2];
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const Act*>(r.act + b * r.act_stride);
    a_scales[b] = r.scales + b * r.scales_stride;
    for (SmallAcc<NB>& c : acc) {
      c.sum[b] = _mm256_setzero_ps();
      c.min[b] = _mm_setzero_ps();
    }
  }
  auto block = [&](int64_t i, SmallAcc<NB>& c) HWY_ATTR {
    const __m256i q = K::Quants(w[i]);
    if constexpr (K::kSigned) {
      // maddubs wants one unsigned operand: move q's sign onto y.
      const __m256i q_abs = _mm256_sign_epi8(q, q);
      const float dw = F16(w[i].d);
      for (int b = 0; b < NB; ++b) {
        const __m256i p = DotU8I8(q_abs, _mm256_sign_epi8(LoadBytes(a[b][i].qs), q));
        c.sum[b] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a_scales[b][2 * i]), _mm256_cvtepi32_ps(p), c.sum[b]);
      }
    } else {
      const __m128 dm = LeadingHalves(&w[i]);
      for (int b = 0; b < NB; ++b) {
        const __m256i p = DotU8I8(q, LoadBytes(a[b][i].qs));
        const __m128 ds = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a_scales[b] + 2 * i)));
        const __m128 scales = _mm_mul_ps(dm, ds);  // [dw * da, m * s]
        c.sum[b] = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), _mm256_cvtepi32_ps(p), c.sum[b]);
        c.min[b] = _mm_add_ps(c.min[b], scales);
      }
    }
  };
  int64_t i = 0;
  for (; i + 2 <= nblocks; i += 2) {
    block(i, acc[0]);
    block(i + 1, acc[1]);
  }
  if (i < nblocks) block(i, acc[0]);
  for (int b = 0; b < NB; ++b) {
    const __m128 min = _mm_add_ps(acc[0].min[b], acc[1].min[b]);
    r.y[b * r.y_stride] = HorizontalSum(_mm256_add_ps(acc[0].sum[b], acc[1].sum[b])) + _mm_cvtss_f32(_mm_movehdup_ps(min));
  }
}

// Q4_K's 12 packed bytes as 8 scales then 8 mins, one byte each.
HWY_INLINE __m128i ScalesMinsK4(const uint8_t* packed) {
  uint32_t u[3];
  memcpy(u, packed, sizeof(u));
  const uint32_t scales_lo = u[0] & 0x3f3f3f3f;
  const uint32_t scales_hi = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
  const uint32_t mins_lo = u[1] & 0x3f3f3f3f;
  const uint32_t mins_hi = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
  return _mm_set_epi32(static_cast<int>(mins_hi), static_cast<int>(mins_lo), static_cast<int>(scales_hi),
                       static_cast<int>(scales_lo));
}

// Broadcasts int16 lane k of each 128-bit half.
HWY_INLINE __m256i BroadcastI16(__m256i v, int k) {
  return _mm256_shuffle_epi8(v, _mm256_set1_epi16(static_cast<int16_t>(0x0100 + 0x0202 * k)));
}

template <int NB>
HWY_INLINE void DotQ4_KRows(const void* wrow, int64_t n, const Rows& r) {
  const int64_t nblocks = n / kQK_K;
  const auto* w = static_cast<const BlockQ4_K*>(wrow);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const BlockQ8_K* a[NB];
  __m256 acc[NB];
  __m128 acc_min[NB];
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const BlockQ8_K*>(r.act + b * r.act_stride);
    acc[b] = _mm256_setzero_ps();
    acc_min[b] = _mm_setzero_ps();
  }
  for (int64_t i = 0; i < nblocks; ++i) {
    const BlockQ4_K& x = w[i];
    const __m256i scales_mins = _mm256_cvtepu8_epi16(ScalesMinsK4(x.scales));
    const __m128i scales = _mm256_castsi256_si128(scales_mins);
    const __m128i mins = _mm256_extracti128_si256(scales_mins, 1);
    const __m256i scales2 = _mm256_set_m128i(scales, scales);
    const float dw = F16(x.d), dmin = F16(x.dmin);
    __m256i sumi[NB];
    for (int b = 0; b < NB; ++b) {
      // The min term, -dmin * sum_j min_j * (sum of sub-block j's activations).
      const __m256i bsums = LoadBytes(a[b][i].bsums);
      const __m128i sub_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
      acc_min[b] = _mm_fmadd_ps(_mm_set1_ps(-dmin * a[b][i].d), _mm_cvtepi32_ps(_mm_madd_epi16(mins, sub_sums)),
                                acc_min[b]);
      sumi[b] = _mm256_setzero_si256();
    }
    // Sub-blocks 2j and 2j + 1 are the low and high nibbles of qs[32j, 32j + 32).
    for (int j = 0; j < kQK_K / 64; ++j) {
      const __m256i scale_lo = BroadcastI16(scales2, 2 * j);
      const __m256i scale_hi = BroadcastI16(scales2, 2 * j + 1);
      const __m256i bits = LoadBytes(x.qs + 32 * j);
      const __m256i q_lo = _mm256_and_si256(bits, low4);
      const __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
      for (int b = 0; b < NB; ++b) {
        const int8_t* y = a[b][i].qs + 64 * j;
        const __m256i p_lo = _mm256_madd_epi16(scale_lo, _mm256_maddubs_epi16(q_lo, LoadBytes(y)));
        const __m256i p_hi = _mm256_madd_epi16(scale_hi, _mm256_maddubs_epi16(q_hi, LoadBytes(y + 32)));
        sumi[b] = _mm256_add_epi32(sumi[b], _mm256_add_epi32(p_lo, p_hi));
      }
    }
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[b][i].d), _mm256_cvtepi32_ps(sumi[b]), acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) r.y[b * r.y_stride] = HorizontalSum(acc[b]) + HorizontalSum(acc_min[b]);
}

template <int NB>
HWY_INLINE void DotQ6_KRows(const void* wrow, int64_t n, const Rows& r) {
  const int64_t nblocks = n / kQK_K;
  const auto* w = static_cast<const BlockQ6_K*>(wrow);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const BlockQ8_K* a[NB];
  __m256 acc[NB];
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const BlockQ8_K*>(r.act + b * r.act_stride);
    acc[b] = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < nblocks; ++i) {
    const BlockQ6_K& x = w[i];
    const __m128i scales = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.scales));
    __m256i sumi[NB];
    for (int b = 0; b < NB; ++b) {
      // Quants are stored +32: take 32 * sum_g scale_g * (sum of group g) off.
      const __m256i offset = _mm256_madd_epi16(LoadBytes(a[b][i].bsums), _mm256_cvtepi8_epi16(scales));
      sumi[b] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
    }
    for (int half = 0; half < 2; ++half) {
      const __m256i ql0 = LoadBytes(x.ql + 64 * half);
      const __m256i ql1 = LoadBytes(x.ql + 64 * half + 32);
      const __m256i qh = LoadBytes(x.qh + 32 * half);
      // Elements 32k + l of this half, as unsigned 6-bit values.
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4)),
          _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(12)), 2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), _mm256_and_si256(qh, _mm256_set1_epi8(48))),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                          _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(-64)), 2)),
      };
      for (int k = 0; k < 4; ++k) {
        // Groups g and g + 1 of 16: 8 int16 lanes of each scale.
        const int64_t g = 8 * half + 2 * k;
        const __m128i pick = _mm_set_epi64x(0x0101010101010101 * (g + 1), 0x0101010101010101 * g);
        const __m256i scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
        for (int b = 0; b < NB; ++b) {
          const __m256i y = LoadBytes(a[b][i].qs + 128 * half + 32 * k);
          sumi[b] = _mm256_add_epi32(sumi[b], _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q[k], y)));
        }
      }
    }
    const float dw = F16(x.d);
    for (int b = 0; b < NB; ++b) {
      acc[b] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[b][i].d), _mm256_cvtepi32_ps(sumi[b]), acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) r.y[b * r.y_stride] = HorizontalSum(acc[b]);
}
#endif  // ATTN_X86_INT

// ----------------------------------------------------------------- dispatch

// Whether DotRows has a kernel for the type on this target; the others are
// dequantized to float first.
HWY_INLINE bool HasKernel(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kBF16:
      return true;
    case GgmlType::kF16:
      return ATTN_NATIVE_F16;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return ATTN_X86_INT;
    default:
      return false;
  }
}

// A tile's weight rows: row i of n elements starts at w + i * stride.
struct WeightRows {
  const uint8_t* w;
  size_t stride;
  int64_t rows;
  int64_t n;
};

using RowKernel = void (*)(const void* w, int64_t n, const Rows& r);

// The row loop sits inside each type's instantiation, so that choosing the
// kernel costs one switch per tile rather than one per row.
template <RowKernel kKernel>
HWY_INLINE void ForEachRow(const WeightRows& wr, const Rows& r) {
  for (int64_t i = 0; i < wr.rows; ++i) {
    Rows ri = r;
    ri.y += i;
    kKernel(wr.w + i * wr.stride, wr.n, ri);
  }
}

template <int NB>
HWY_INLINE void DotRowsN(GgmlType type, const WeightRows& wr, const Rows& r) {
  switch (type) {
    case GgmlType::kF32: return ForEachRow<DotFloatRows<GgmlType::kF32, NB>>(wr, r);
    case GgmlType::kBF16: return ForEachRow<DotFloatRows<GgmlType::kBF16, NB>>(wr, r);
#if ATTN_NATIVE_F16
    case GgmlType::kF16: return ForEachRow<DotFloatRows<GgmlType::kF16, NB>>(wr, r);
#endif
#if ATTN_X86_INT
    case GgmlType::kQ4_0: return ForEachRow<DotSmallRows<Q4_0Kernel, NB>>(wr, r);
    case GgmlType::kQ4_1: return ForEachRow<DotSmallRows<Q4_1Kernel, NB>>(wr, r);
    case GgmlType::kQ5_0: return ForEachRow<DotSmallRows<Q5_0Kernel, NB>>(wr, r);
    case GgmlType::kQ5_1: return ForEachRow<DotSmallRows<Q5_1Kernel, NB>>(wr, r);
    case GgmlType::kQ8_0: return ForEachRow<DotSmallRows<Q8_0Kernel, NB>>(wr, r);
    case GgmlType::kQ4_K: return ForEachRow<DotQ4_KRows<NB>>(wr, r);
    case GgmlType::kQ6_K: return ForEachRow<DotQ6_KRows<NB>>(wr, r);
#endif
    default: UnsupportedType("DotRows", type);
  }
}

// Dot products of every row of wr with nb (1..kMaxActRows) activation rows.
HWY_INLINE void DotRows(GgmlType type, int nb, const WeightRows& wr, const Rows& r) {
  switch (nb) {
    case 1: return DotRowsN<1>(type, wr, r);
    case 2: return DotRowsN<2>(type, wr, r);
    case 3: return DotRowsN<3>(type, wr, r);
    default: return DotRowsN<4>(type, wr, r);
  }
}

void DotTileImpl(GgmlType type, const void* w, size_t w_stride, int64_t rows, int64_t cols, const ActRows& act,
                 float* y, int64_t y_stride) {
  const bool direct = HasKernel(type);
  // Float copies for types without a kernel here (portable targets only).
  thread_local std::vector<float> w_float, act_float;
  if (!direct) {
    w_float.resize(cols);
    act_float.resize(kMaxActRows * cols);
  }
  const WeightRows wr{static_cast<const uint8_t*>(w), w_stride, rows, cols};
  const int64_t scales_stride = ActScalesPerRow(ActivationTypeFor(type), cols);
  for (int64_t b0 = 0; b0 < act.count; b0 += kMaxActRows) {
    const int nb = static_cast<int>(std::min<int64_t>(kMaxActRows, act.count - b0));
    Rows r{static_cast<const uint8_t*>(act.data) + b0 * act.stride,
           act.stride,
           act.scales + b0 * scales_stride,
           scales_stride,
           y + b0 * y_stride,
           y_stride};
    if (direct) {
      DotRows(type, nb, wr, r);
      continue;
    }
    for (int b = 0; b < nb; ++b) {
      DequantizeRow(ActivationTypeFor(type), r.act + b * act.stride, act_float.data() + b * cols, cols);
    }
    r.act = reinterpret_cast<const uint8_t*>(act_float.data());
    r.act_stride = cols * sizeof(float);
    for (int64_t i = 0; i < rows; ++i) {
      DequantizeRow(type, wr.w + i * w_stride, w_float.data(), cols);
      Rows ri = r;
      ri.y += i;
      DotRows(GgmlType::kF32, nb, WeightRows{reinterpret_cast<const uint8_t*>(w_float.data()), 0, 1, cols}, ri);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnserve {

HWY_EXPORT(DotTileImpl);

int64_t ActScalesPerRow(GgmlType act_type, int64_t cols) {
  return act_type == GgmlType::kQ8_0 || act_type == GgmlType::kQ8_1 ? 2 * (cols / kQK) : 0;
}

void ComputeActScales(GgmlType act_type, const void* row, int64_t cols, float* scales) {
  // Gather the fp16 pairs into chunks for the vectorized conversion.
  constexpr int64_t kChunk = 64;
  fp16_t halves[2 * kChunk];
  const auto* bytes = static_cast<const uint8_t*>(row);
  const size_t block_bytes = TypeTraits(act_type)->block_bytes;
  const bool has_s = act_type == GgmlType::kQ8_1;
  for (int64_t i0 = 0; i0 < cols / kQK; i0 += kChunk) {
    const int64_t blocks = std::min(kChunk, cols / kQK - i0);
    for (int64_t i = 0; i < blocks; ++i) {
      const uint8_t* block = bytes + (i0 + i) * block_bytes;
      memcpy(&halves[2 * i], block, sizeof(fp16_t));
      if (has_s) {
        memcpy(&halves[2 * i + 1], block + sizeof(fp16_t), sizeof(fp16_t));
      } else {
        halves[2 * i + 1] = 0;
      }
    }
    Fp16ToFloatRow(halves, scales + 2 * i0, 2 * blocks);
  }
}

void DotTile(GgmlType type, const void* w, size_t w_stride, int64_t rows, int64_t cols, const ActRows& act,
             float* y, int64_t y_stride) {
  HWY_DYNAMIC_DISPATCH(DotTileImpl)(type, w, w_stride, rows, cols, act, y, y_stride);
}

}  // namespace attnserve
#endif  // HWY_ONCE
