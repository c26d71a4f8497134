// Dot products of weight rows with up to four activation rows at a time
// (Highway, dispatched at run time): the float kernels, the choice of kernel
// per tile and the portable path, which dequantizes the types that have no
// integer kernel on the target (dot_x86-inl.h has them for AVX2 and up).
#include "kernels/cpu/matmul_dot.h"

#include <algorithm>
#include <cmath>
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
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "kernels/cpu/dot_x86-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Highway converts f16 by truncation on targets without F16C (those without
// the x86 integer kernels); F16 weights go through the exact dequantizer there.
constexpr bool kNativeF16 = ATTN_X86_INT;

// Activation rows sharing one pass over a weight row: enough to turn the
// batched forward compute-bound, few enough to keep accumulators in registers.
// Also ggml's group of activation rows in its repacked gemm: DotRows sees a
// batch in groups of 4 from its first row, as ggml does (Q4_K's order).
constexpr int kMaxActRows = 4;

// ------------------------------------------------------------ float weights
//
// F16 and BF16 weights multiply activations rounded to their own type, F32
// weights F32 activations, as llama.cpp does (vec_dot_type). The sums follow
// llama.cpp's AVX-512 kernels lane for lane, in a logical 16-lane vector
// held as kParts Highway vectors:
// - the batched path (tinyBLAS in llamafile/sgemm.cpp, taken for more than
//   one activation row when cols is a multiple of its step and rows of 4):
//   one 16-lane accumulator per output, fma over the row in steps of 16
//   (BF16: vdpbf16ps over steps of 32), then _mm512_reduce_add_ps;
// - one activation row (ggml_vec_dot_f32/f16/bf16 in vec.cpp): F32 and F16
//   keep four accumulators over steps of 64 and fold them 0+2, 1+3, 0+1
//   before the reduction; BF16 keeps two (elements 0-31 and 32-63 of each
//   64) reduced separately and added in double; the elements past the last
//   full step follow in scalar code (F32 fused into a float sum, F16 and BF16
//   added in double).

using DF16 = hn::CappedTag<float, 16>;
constexpr int kParts = static_cast<int>(16 / hn::MaxLanes(DF16()));
constexpr int64_t kPartLanes = static_cast<int64_t>(hn::MaxLanes(DF16()));

struct Vec16 {
  hn::Vec<DF16> part[kParts];  // logical lanes [p * kPartLanes, (p + 1) * kPartLanes)
};

HWY_INLINE Vec16 Zero16() {
  Vec16 v;
  for (auto& p : v.part) p = hn::Zero(DF16());
  return v;
}

HWY_INLINE void Add16(Vec16& x, const Vec16& y) {
  for (int p = 0; p < kParts; ++p) x.part[p] = hn::Add(x.part[p], y.part[p]);
}

// _mm512_reduce_add_ps as GCC expands it: the upper 8 lanes added to the
// lower, then the upper 4 of those, then lanes 2-3 to 0-1, then lane 1 to 0.
HWY_INLINE float ReduceAdd16(const Vec16& x) {
  HWY_ALIGN float l[16];
  for (int p = 0; p < kParts; ++p) hn::Store(x.part[p], DF16(), l + p * kPartLanes);
  float t8[8], t4[4];
  for (int i = 0; i < 8; ++i) t8[i] = l[i + 8] + l[i];
  for (int i = 0; i < 4; ++i) t4[i] = t8[i + 4] + t8[i];
  return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}

template <GgmlType kType>
HWY_INLINE hn::Vec<DF16> LoadFloats(const void* p, int64_t i) {
  const DF16 df;
  if constexpr (kType == GgmlType::kF32) {
    return hn::LoadU(df, static_cast<const float*>(p) + i);
  } else {
    const hn::Rebind<hwy::float16_t, DF16> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, static_cast<const hwy::float16_t*>(p) + i));
  }
}

// acc += 16 logical lanes of w * a from element i (F32, F16 weights; the
// activations of F16 weights arrive widened to F32, see DotTileImpl).
template <GgmlType kType>
HWY_INLINE void Fma16(const void* w, const void* a, int64_t i, Vec16& acc) {
  for (int p = 0; p < kParts; ++p) {
    acc.part[p] = hn::MulAdd(LoadFloats<kType>(w, i + p * kPartLanes),
                             LoadFloats<GgmlType::kF32>(a, i + p * kPartLanes), acc.part[p]);
  }
}

// vdpbf16ps over the 32 bf16 from element i: lane j adds the product of
// elements 2j + 1, then that of 2j, each rounded once (products of bf16 are
// exact in float).
HWY_INLINE void DotBf16x32(const bf16_t* w, const bf16_t* a, int64_t i, Vec16& acc) {
  const DF16 df;
  const hn::RebindToUnsigned<DF16> du;
  const auto hi = hn::Set(du, 0xFFFF0000u);
  for (int p = 0; p < kParts; ++p) {
    const auto wp = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w + i) + p * kPartLanes);
    const auto ap = hn::LoadU(du, reinterpret_cast<const uint32_t*>(a + i) + p * kPartLanes);
    const auto odd = hn::MulAdd(hn::BitCast(df, hn::And(wp, hi)), hn::BitCast(df, hn::And(ap, hi)), acc.part[p]);
    acc.part[p] = hn::MulAdd(hn::BitCast(df, hn::ShiftLeft<16>(wp)), hn::BitCast(df, hn::ShiftLeft<16>(ap)), odd);
  }
}

// Returns v, opaque to the optimizer: GCC (-ffp-contract=fast) would fuse
// a product it is added to into a fused multiply-add.
HWY_INLINE float Opaque(float v) {
#if HWY_ARCH_X86
  asm("" : "+x"(v));
#else
  volatile float t = v;
  v = t;
#endif
  return v;
}

template <GgmlType kType>
HWY_INLINE float ElementAt(const void* p, int64_t i) {
  if constexpr (kType == GgmlType::kF32) return static_cast<const float*>(p)[i];
  if constexpr (kType == GgmlType::kF16) return Fp16ToFloat(static_cast<const fp16_t*>(p)[i]);
  return Bf16ToFloat(static_cast<const bf16_t*>(p)[i]);
}

// tinyBLAS: n is a multiple of FloatGemmStep(kType).
template <GgmlType kType, int NB>
HWY_INLINE void DotFloatRowsGemm(const void* w, int64_t n, const Rows& r) {
  Vec16 acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = Zero16();
  if constexpr (kType == GgmlType::kBF16) {
    for (int64_t i = 0; i < n; i += 32) {
      for (int b = 0; b < NB; ++b) {
        DotBf16x32(static_cast<const bf16_t*>(w), reinterpret_cast<const bf16_t*>(r.act + b * r.act_stride), i,
                   acc[b]);
      }
    }
  } else {
    for (int64_t i = 0; i < n; i += 16) {
      for (int b = 0; b < NB; ++b) Fma16<kType>(w, r.act + b * r.act_stride, i, acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) r.y[b * r.y_stride] = ReduceAdd16(acc[b]);
}

// ggml_vec_dot_{f32,f16,bf16}.
template <GgmlType kType, int NB>
HWY_INLINE void DotFloatRowsVecDot(const void* w, int64_t n, const Rows& r) {
  for (int b = 0; b < NB; ++b) {
    const void* a = r.act + b * r.act_stride;
    const int64_t np = n & ~int64_t{63};
    float* y = r.y + b * r.y_stride;
    if constexpr (kType == GgmlType::kBF16) {
      Vec16 c1 = Zero16(), c2 = Zero16();
      const auto* wb = static_cast<const bf16_t*>(w);
      const auto* ab = static_cast<const bf16_t*>(a);
      for (int64_t i = 0; i < np; i += 64) {
        DotBf16x32(wb, ab, i, c1);
        DotBf16x32(wb, ab, i + 32, c2);
      }
      double sum = 0;
      sum += static_cast<double>(ReduceAdd16(c1));
      sum += static_cast<double>(ReduceAdd16(c2));
      for (int64_t i = np; i < n; ++i) sum += static_cast<double>(Bf16ToFloat(wb[i]) * Bf16ToFloat(ab[i]));
      *y = static_cast<float>(sum);
    } else {
      Vec16 acc[4] = {Zero16(), Zero16(), Zero16(), Zero16()};
      for (int64_t i = 0; i < np; i += 64) {
        for (int j = 0; j < 4; ++j) Fma16<kType>(w, a, i + 16 * j, acc[j]);
      }
      Add16(acc[0], acc[2]);
      Add16(acc[1], acc[3]);
      Add16(acc[0], acc[1]);
      if constexpr (kType == GgmlType::kF32) {
        // GCC vectorizes ggml's `sumf += x[i] * y[i]` over the leftovers in
        // whole 16s, then one 8, with the products rounded before the
        // in-order additions, and fuses the last (up to 7) into fmas.
        float sum = ReduceAdd16(acc[0]);
        const int64_t left = n - np;
        const int64_t unfused = np + left / 16 * 16 + (left % 16 >= 8 ? 8 : 0);
        const auto* wf = static_cast<const float*>(w);
        const auto* af = static_cast<const float*>(a);
        for (int64_t i = np; i < unfused; ++i) sum += Opaque(wf[i] * af[i]);
        for (int64_t i = unfused; i < n; ++i) sum = std::fma(wf[i], af[i], sum);
        *y = sum;
      } else {
        double sum = static_cast<double>(ReduceAdd16(acc[0]));
        for (int64_t i = np; i < n; ++i) {
          sum += static_cast<double>(ElementAt<kType>(w, i) * ElementAt<GgmlType::kF32>(a, i));
        }
        *y = static_cast<float>(sum);
      }
    }
  }
}

// ----------------------------------------------------------------- dispatch

// Whether DotRows has a kernel for the type on this target; the others are
// dequantized to float first.
HWY_INLINE bool HasKernel(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kBF16: return true;
    case GgmlType::kF16: return kNativeF16;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K: return ATTN_X86_INT;
    default: return false;
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
using RowsKernel = void (*)(const uint8_t* w, size_t w_stride, int64_t n, const Rows& r);

// Requests the rows ~kPrefetchBytes ahead, so that a task's rows arrive
// without waiting for the hardware prefetcher to notice the new stream.
constexpr int64_t kPrefetchBytes = 4096;

HWY_INLINE int64_t PrefetchStart(const WeightRows& wr) {
  const int64_t ahead = wr.stride == 0 ? 0 : (kPrefetchBytes + wr.stride - 1) / wr.stride;
  const int64_t prefetched = std::min(wr.rows, ahead);
  for (int64_t i = 0; i < prefetched * static_cast<int64_t>(wr.stride); i += 64) hwy::Prefetch(wr.w + i);
  return ahead;
}

HWY_INLINE void PrefetchRows(const WeightRows& wr, int64_t first, int64_t count) {
  count = std::min(count, wr.rows - first);
  if (count <= 0) return;
  const uint8_t* next = wr.w + first * wr.stride;
  for (size_t off = 0; off < count * wr.stride; off += 64) hwy::Prefetch(next + off);
}

// The row loop sits inside each type's instantiation, so that choosing the
// kernel costs one switch per tile rather than one per row.
template <RowKernel kKernel>
HWY_INLINE void ForEachRow(const WeightRows& wr, const Rows& r) {
  const int64_t ahead = PrefetchStart(wr);
  for (int64_t i = 0; i < wr.rows; ++i) {
    PrefetchRows(wr, i + ahead, 1);
    Rows ri = r;
    ri.y += i;
    kKernel(wr.w + i * wr.stride, wr.n, ri);
  }
}

// Same for kernels taking kRows weight rows at a time (kOne: one row, for
// the rest).
template <int kRows, RowsKernel kKernel, RowsKernel kOne>
HWY_INLINE void ForEachRowGroup(const WeightRows& wr, const Rows& r) {
  const int64_t ahead = PrefetchStart(wr);
  int64_t i = 0;
  for (; i + kRows <= wr.rows; i += kRows) {
    PrefetchRows(wr, i + ahead, kRows);
    Rows ri = r;
    ri.y += i;
    kKernel(wr.w + i * wr.stride, wr.stride, wr.n, ri);
  }
  for (; i < wr.rows; ++i) {
    Rows ri = r;
    ri.y += i;
    kOne(wr.w + i * wr.stride, wr.stride, wr.n, ri);
  }
}

#if ATTN_X86_INT
// Weight rows per pass of the 32-element kernels: enough independent
// accumulator chains (weight rows x activation rows) to hide the FMA latency.
template <class K, int NB>
HWY_INLINE void ForEachSmallRow(const WeightRows& wr, const Rows& r) {
  constexpr int kRows = NB == 1 ? 4 : (NB == 2 ? 2 : 1);
  ForEachRowGroup<kRows, DotSmallRows<K, kRows, NB>, DotSmallRows<K, 1, NB>>(wr, r);
}

// The Q4_K orders with scalar chains: one activation row with 8 weight rows
// at a time, else one weight row with the activation rows.
template <int NB, Q4KOrder kOrder>
HWY_INLINE void ForEachQ4_KChain(const WeightRows& wr, const Rows& r) {
  if constexpr (NB == 1) {
    ForEachRowGroup<8, DotQ4_KChain8Rows<kOrder>, DotQ4_KChainRows<1, 1, kOrder>>(wr, r);
  } else {
    ForEachRowGroup<1, DotQ4_KChainRows<1, NB, kOrder>, DotQ4_KChainRows<1, NB, kOrder>>(wr, r);
  }
}
#endif

template <GgmlType kType, int NB>
HWY_INLINE void ForEachFloatRow(const WeightRows& wr, const Rows& r, bool vec_dot) {
#if ATTN_X86_INT && ATTN_HW_BF16
  if (kType == GgmlType::kBF16 && HasAvx512Bf16()) {
    if (vec_dot) return ForEachRow<DotBf16RowsVecDotHw<NB>>(wr, r);
    return ForEachRow<DotBf16RowsGemmHw<NB>>(wr, r);
  }
#endif
  if (vec_dot) return ForEachRow<DotFloatRowsVecDot<kType, NB>>(wr, r);
  ForEachRow<DotFloatRowsGemm<kType, NB>>(wr, r);
}

template <int NB>
HWY_INLINE void DotRowsN(GgmlType type, const WeightRows& wr, const Rows& r, bool vec_dot, bool repacked, bool tiled) {
  switch (type) {
    case GgmlType::kF32: return ForEachFloatRow<GgmlType::kF32, NB>(wr, r, vec_dot);
    case GgmlType::kBF16: return ForEachFloatRow<GgmlType::kBF16, NB>(wr, r, vec_dot);
    case GgmlType::kF16: return ForEachFloatRow<GgmlType::kF16, NB>(wr, r, vec_dot);
#if ATTN_X86_INT
    case GgmlType::kQ4_0:
      if (repacked) return ForEachRowGroup<4, DotQ4_0RepackedRows<4, NB>, DotQ4_0RepackedRows<1, NB>>(wr, r);
      return ForEachSmallRow<Q4_0Kernel, NB>(wr, r);
    case GgmlType::kQ4_1: return ForEachSmallRow<Q4_1Kernel, NB>(wr, r);
    case GgmlType::kQ5_0: return ForEachSmallRow<Q5_0Kernel, NB>(wr, r);
    case GgmlType::kQ5_1: return ForEachSmallRow<Q5_1Kernel, NB>(wr, r);
    case GgmlType::kQ8_0: return ForEachSmallRow<Q8_0Kernel, NB>(wr, r);
    case GgmlType::kQ4_K:
      if (tiled) return ForEachQ4_KChain<NB, Q4KOrder::kTiled>(wr, r);
      if (!repacked) return ForEachRow<DotQ4_KRows<NB>>(wr, r);
      // A whole group of 4 activation rows goes through ggml's gemm, the
      // rest of the batch through its gemv.
      if constexpr (NB == 4) return ForEachQ4_KChain<NB, Q4KOrder::kRepackedGemm>(wr, r);
      return ForEachQ4_KChain<NB, Q4KOrder::kRepackedGemv>(wr, r);
    case GgmlType::kQ6_K:
      if (!tiled) return ForEachRow<DotQ6_KRows<NB>>(wr, r);
      if constexpr (NB == 1) return ForEachRowGroup<4, DotQ6_KTiledRows<4, 1>, DotQ6_KTiledRows<1, 1>>(wr, r);
      return ForEachRowGroup<1, DotQ6_KTiledRows<1, NB>, DotQ6_KTiledRows<1, NB>>(wr, r);
#endif
    default: UnsupportedType("DotRows", type);
  }
}

// Dot products of every row of wr with nb (1..kMaxActRows) activation rows.
HWY_INLINE void DotRows(GgmlType type, int nb, const WeightRows& wr, const Rows& r, bool vec_dot, bool repacked, bool tiled) {
  switch (nb) {
    case 1: return DotRowsN<1>(type, wr, r, vec_dot, repacked, tiled);
    case 2: return DotRowsN<2>(type, wr, r, vec_dot, repacked, tiled);
    case 3: return DotRowsN<3>(type, wr, r, vec_dot, repacked, tiled);
    default: return DotRowsN<4>(type, wr, r, vec_dot, repacked, tiled);
  }
}

void DotTileImpl(GgmlType type, const void* w, size_t w_stride, int64_t rows, int64_t cols, const ActRows& act,
                 float* y, int64_t y_stride) {
  const bool direct = HasKernel(type);
  // Float copies for types without a kernel here (portable targets only),
  // and of F16 activations.
  thread_local std::vector<float> w_float, act_float;
  if (!direct) w_float.resize(cols);
  if (!direct || type == GgmlType::kF16) act_float.resize(kMaxActRows * cols);
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
      if (type == GgmlType::kF16) {
        // Widened once here rather than once per weight row (exact).
        for (int b = 0; b < nb; ++b) {
          Fp16ToFloatRow(reinterpret_cast<const fp16_t*>(r.act + b * act.stride), act_float.data() + b * cols, cols);
        }
        r.act = reinterpret_cast<const uint8_t*>(act_float.data());
        r.act_stride = cols * sizeof(float);
      }
      DotRows(type, nb, wr, r, act.float_vec_dot, act.repacked, act.tiled);
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
      DotRows(GgmlType::kF32, nb, WeightRows{reinterpret_cast<const uint8_t*>(w_float.data()), 0, 1, cols}, ri,
              act.float_vec_dot, false, false);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnserve {

HWY_EXPORT(DotTileImpl);

bool FloatUsesVecDot(GgmlType type, int64_t rows, int64_t cols, int64_t batch) {
  // tinyBLAS's step (KN) on AVX-512: 16 floats, 32 bf16 with AVX512_BF16.
  const int64_t step = type == GgmlType::kBF16 ? 32 : 16;
  return batch < 2 || cols % step != 0 || rows % 4 != 0;
}

bool UsesRepackedOrder(GgmlType type, int64_t rows) {
  return (type == GgmlType::kQ4_0 || type == GgmlType::kQ4_K) && rows % 8 == 0;
}

bool UsesTiledOrder(GgmlType type, int64_t rows, int64_t batch) {
  return (type == GgmlType::kQ4_K || type == GgmlType::kQ6_K) && batch >= 8 && !UsesRepackedOrder(type, rows);
}

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

void DotTile(GgmlType type, const void* w, size_t w_stride, int64_t rows, int64_t cols, const ActRows& act, float* y,
             int64_t y_stride) {
  HWY_DYNAMIC_DISPATCH(DotTileImpl)(type, w, w_stride, rows, cols, act, y, y_stride);
}

}  // namespace attnserve
#endif  // HWY_ONCE
