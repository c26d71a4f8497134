// Integer dot products of the 32-element block types (Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0) with Q8 activations, in the orders of llama.cpp's x86 kernels.
// Part of dot_x86-inl.h, which includes it once per target where
// ATTN_X86_INT, after the shared helpers: no include guard of its own.

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {

// The 32-element types, as 32 quants per block: the *_0 types give signed
// quants centred on 0 (x = q * d), the *_1 types unsigned ones and a min m
// (x = q * d + m), whose term is m * s with the s = d * sum(q) of Q8_1.
// Q4_0 and Q5_0 give their stored unsigned quants, kBias above the signed
// ones: the kernels take kBias times the activations' sums off the products,
// which leaves every integer sum as it was (and saves moving signs around).
struct Q4_0Kernel {
  using Block = BlockQ4_0;
  using Act = BlockQ8_0;
  static constexpr bool kSigned = true;
  static constexpr int kBias = 8;
  static __m256i Quants(const Block& b) { return Nibbles(b.qs); }
};
struct Q4_1Kernel {
  using Block = BlockQ4_1;
  using Act = BlockQ8_1;
  static constexpr bool kSigned = false;
  static constexpr int kBias = 0;
  static __m256i Quants(const Block& b) { return Nibbles(b.qs); }
};
// Q5_0 and Q5_1: the low nibbles with each quant's fifth bit from qh.
template <typename Block>
HWY_INLINE __m256i FiveBitQuants(const Block& b) {
  return _mm256_or_si256(Nibbles(b.qs), _mm256_and_si256(BitsToBytes(b.qh), _mm256_set1_epi8(16)));
}

struct Q5_0Kernel {
  using Block = BlockQ5_0;
  using Act = BlockQ8_0;
  static constexpr bool kSigned = true;
  static constexpr int kBias = 16;
  static __m256i Quants(const Block& b) { return FiveBitQuants(b); }
};
struct Q5_1Kernel {
  using Block = BlockQ5_1;
  using Act = BlockQ8_1;
  static constexpr bool kSigned = false;
  static constexpr int kBias = 0;
  static __m256i Quants(const Block& b) { return FiveBitQuants(b); }
};
struct Q8_0Kernel {
  using Block = BlockQ8_0;
  using Act = BlockQ8_0;
  static constexpr bool kSigned = true;
  static constexpr int kBias = 0;
  static __m256i Quants(const Block& b) { return LoadBytes(b.qs); }
};

// The integer sums of 4 products per lane of a block's quants q (K::Quants)
// with the activation quants y, as ggml's kernels get them. With kUseBias
// (worth it where several weight rows share y), the biased unsigned quants
// of Q4_0 / Q5_0 go in as they are and bias_sums (BiasSums: kBias times the
// lanes' sums of y) come off; else the sign moves onto y, as in ggml.
template <class K, bool kUseBias>
HWY_INLINE __m256i BlockLaneSums(__m256i q, __m256i y, [[maybe_unused]] __m256i bias_sums) {
  if constexpr (K::kBias != 0 && kUseBias) {
    return _mm256_sub_epi32(DotU8I8(q, y), bias_sums);
  } else if constexpr (K::kSigned) {
    if constexpr (K::kBias != 0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(K::kBias));
    // maddubs/vpdpbusd want one unsigned operand: move q's sign onto y.
    return DotU8I8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
  } else {
    return DotU8I8(q, y);
  }
}

template <class K, bool kUseBias>
HWY_INLINE __m256i BiasSums(__m256i y) {
  if constexpr (K::kBias == 0 || !kUseBias) {
    return _mm256_setzero_si256();
  } else {
    static_assert(K::kBias == 8 || K::kBias == 16);
    constexpr int kShift = K::kBias == 8 ? 3 : 4;
    return _mm256_slli_epi32(DotU8I8(_mm256_set1_epi8(1), y), kShift);
  }
}

// Dot products of MR consecutive weight rows (w_stride bytes apart) with NB
// activation rows, in the order of ggml's AVX2 vec_dot_<type>_q8_{0,1}
// (ggml/src/ggml-cpu/arch/x86/quants.c), which llama.cpp's tinyBLAS
// (llamafile/sgemm.cpp, tinyBLAS_Q0_AVX) repeats for the *_0 types at batch
// sizes above 1: one 8-lane accumulator per output, and per block
//   acc = fma(set1(d_w * d_a), float(8 int32 sums of 4 products), acc)
// in block order; the *_1 types add their min term per block in a scalar
// fused multiply-add, summs = fma(m_w, s_a, summs) (GCC contracts ggml's
// `summs += m * s`). The result is hsum(acc) + summs, hsum adding the upper
// 128-bit half to the lower, then lanes 2-3 to 0-1, then lane 1 to 0. Each
// output is thus a function of its two rows only, bit for bit what llama.cpp
// computes; the MR * NB independent chains hide the FMA latency that a
// single output's chain is bound by.
template <class K, int MR, int NB>
HWY_INLINE void DotSmallRows(const uint8_t* wrows, size_t w_stride, int64_t n, const Rows& r) {
  using Act = typename K::Act;
  using Block = typename K::Block;
  const int64_t nblocks = n / kQK;
  const Block* w[MR];
  for (int m = 0; m < MR; ++m) w[m] = reinterpret_cast<const Block*>(wrows + m * w_stride);
  const Act* a[NB];
  const float* a_scales[NB];  // [d, s] per block
  __m256 acc[MR][NB];
  __m128 summs[MR][NB];  // lane 1 (*_1 types)
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const Act*>(r.act + b * r.act_stride);
    a_scales[b] = r.scales + b * r.scales_stride;
    for (int m = 0; m < MR; ++m) {
      acc[m][b] = _mm256_setzero_ps();
      summs[m][b] = _mm_setzero_ps();
    }
  }
  for (int64_t i = 0; i < nblocks; ++i) {
    __m256i y[NB], bias_sums[NB];
    for (int b = 0; b < NB; ++b) {
      y[b] = LoadBytes(a[b][i].qs);
      bias_sums[b] = BiasSums<K, (MR > 1)>(y[b]);
    }
    for (int m = 0; m < MR; ++m) {
      const Block& x = w[m][i];
      const __m256i q = K::Quants(x);
      if constexpr (K::kSigned) {
        const float dw = F16(x.d);
        for (int b = 0; b < NB; ++b) {
          const __m256i p = BlockLaneSums<K, (MR > 1)>(q, y[b], bias_sums[b]);
          acc[m][b] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a_scales[b][2 * i]), _mm256_cvtepi32_ps(p), acc[m][b]);
        }
      } else {
        // Lanes [d_w, m_w] times [d_a, s_a]: lane 0 of the product is the
        // block's scale, lane 1 of the fused multiply-add the running summs.
        const __m128 dm = LeadingHalves(&x);
        for (int b = 0; b < NB; ++b) {
          const __m256i p = BlockLaneSums<K, (MR > 1)>(q, y[b], bias_sums[b]);
          const __m128 ds = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a_scales[b] + 2 * i)));
          acc[m][b] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_mul_ps(dm, ds)), _mm256_cvtepi32_ps(p), acc[m][b]);
          summs[m][b] = _mm_fmadd_ps(dm, ds, summs[m][b]);
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int b = 0; b < NB; ++b) {
      float sum = HorizontalSum(acc[m][b]);
      if constexpr (!K::kSigned) sum += _mm_cvtss_f32(_mm_movehdup_ps(summs[m][b]));
      r.y[b * r.y_stride + m] = sum;
    }
  }
}

// Q4_0 in the order of the 8x8 repacked kernels that llama.cpp's CPU_REPACK
// buffer uses for Q4_0 matrices of a multiple of 8 rows on AVX2
// (ggml_gemv/gemm_q4_0_8x8_q8_0): per block one integer sum per output, then
//   acc = fma(float(sum), d_w * d_a, acc)
// in block order, one scalar chain per output, here MR (<= 4) rows in the
// lanes of one vector.
template <int MR, int NB>
HWY_INLINE void DotQ4_0RepackedRows(const uint8_t* wrows, size_t w_stride, int64_t n, const Rows& r) {
  const int64_t nblocks = n / kQK;
  const BlockQ4_0* w[MR];
  for (int m = 0; m < MR; ++m) w[m] = reinterpret_cast<const BlockQ4_0*>(wrows + m * w_stride);
  const BlockQ8_0* a[NB];
  const float* a_scales[NB];
  __m128 acc[NB];
  for (int b = 0; b < NB; ++b) {
    a[b] = reinterpret_cast<const BlockQ8_0*>(r.act + b * r.act_stride);
    a_scales[b] = r.scales + b * r.scales_stride;
    acc[b] = _mm_setzero_ps();
  }
  for (int64_t i = 0; i < nblocks; ++i) {
    __m256i y[NB], bias_sums[NB];
    for (int b = 0; b < NB; ++b) {
      y[b] = LoadBytes(a[b][i].qs);
      bias_sums[b] = BiasSums<Q4_0Kernel, (MR > 1)>(y[b]);
    }
    __m256i p[NB][4];
    uint16_t d[4] = {0, 0, 0, 0};
    for (int m = 0; m < MR; ++m) {
      const BlockQ4_0& x = w[m][i];
      const __m256i q = Q4_0Kernel::Quants(x);
      memcpy(&d[m], &x.d, sizeof(d[m]));
      for (int b = 0; b < NB; ++b) p[b][m] = BlockLaneSums<Q4_0Kernel, (MR > 1)>(q, y[b], bias_sums[b]);
    }
    uint64_t d_bits;
    memcpy(&d_bits, d, sizeof(d_bits));
    const __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<int64_t>(d_bits)));
    for (int b = 0; b < NB; ++b) {
      const __m128 sums = _mm_cvtepi32_ps(RowSumsI32<MR>(p[b]));
      acc[b] = _mm_fmadd_ps(sums, _mm_mul_ps(dw, _mm_set1_ps(a_scales[b][2 * i])), acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    HWY_ALIGN float out[4];
    _mm_store_ps(out, acc[b]);
    for (int m = 0; m < MR; ++m) r.y[b * r.y_stride + m] = out[m];
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();
