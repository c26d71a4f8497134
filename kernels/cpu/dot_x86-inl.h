// Integer dot products of quantized weight rows with 8-bit activations for
// the AVX2, AVX3 and AVX3_DL targets, as llama.cpp's x86 kernels do them:
// u8 x i8 products summed in pairs to i16 (maddubs), then to i32 (madd, or
// both at once with VNNI's vpdpbusd), scaled per block in float. Highway
// 1.0.3 has no u8 x i8 pair product, hence intrinsics. Included by
// matmul_dot.cc once per target; defines ATTN_X86_INT to 1 where it
// provides the kernels.

// Per-target include guard.
#if defined(ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_
#undef ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_
#else
#define ATTNSERVE_KERNELS_CPU_DOT_X86_INL_H_
#endif

#include <cstring>

#include "hwy/highway.h"
#include "kernels/common/ggml_types.h"
#include "kernels/cpu/matmul_dot.h"

#undef ATTN_X86_INT
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define ATTN_X86_INT 1
#else
#define ATTN_X86_INT 0
#endif

#if ATTN_X86_INT
HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {

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

// The 32-element types, as 32 quants per block: the *_0 types give signed
// quants centred on 0 (x = q * d), the *_1 types unsigned ones and a min m
// (x = q * d + m), whose term is m * s with the s = d * sum(q) of Q8_1.
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
    r.y[b * r.y_stride] =
        HorizontalSum(_mm256_add_ps(acc[0].sum[b], acc[1].sum[b])) + _mm_cvtss_f32(_mm_movehdup_ps(min));
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
      acc_min[b] =
          _mm_fmadd_ps(_mm_set1_ps(-dmin * a[b][i].d), _mm_cvtepi32_ps(_mm_madd_epi16(mins, sub_sums)), acc_min[b]);
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
          _mm256_or_si256(_mm256_and_si256(ql1, low4),
                          _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(12)), 2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                          _mm256_and_si256(qh, _mm256_set1_epi8(48))),
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

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();
#endif  // ATTN_X86_INT

#endif  // per-target include guard
