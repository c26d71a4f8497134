// Dot products of weight rows with up to four activation rows at a time
// (Highway, dispatched at run time): the float kernels, the choice of kernel
// per tile and the portable path, which dequantizes the types that have no
// integer kernel on the target (dot_x86-inl.h has them for AVX2 and up).
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
constexpr int kMaxActRows = 4;

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

// The row loop sits inside each type's instantiation, so that choosing the
// kernel costs one switch per tile rather than one per row.
template <RowKernel kKernel>
HWY_INLINE void ForEachRow(const WeightRows& wr, const Rows& r) {
  // Requests the rows ~kPrefetchBytes ahead, so that a task's rows arrive
  // without waiting for the hardware prefetcher to notice the new stream.
  constexpr int64_t kPrefetchBytes = 4096;
  const int64_t ahead = wr.stride == 0 ? 0 : (kPrefetchBytes + wr.stride - 1) / wr.stride;
  const int64_t prefetched = std::min(wr.rows, ahead);
  for (int64_t i = 0; i < prefetched * static_cast<int64_t>(wr.stride); i += 64) hwy::Prefetch(wr.w + i);
  for (int64_t i = 0; i < wr.rows; ++i) {
    if (i + ahead < wr.rows) {
      const uint8_t* next = wr.w + (i + ahead) * wr.stride;
      for (size_t off = 0; off < wr.stride; off += 64) hwy::Prefetch(next + off);
    }
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
    case GgmlType::kF16: return ForEachRow<DotFloatRows<GgmlType::kF16, NB>>(wr, r);
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

void DotTile(GgmlType type, const void* w, size_t w_stride, int64_t rows, int64_t cols, const ActRows& act, float* y,
             int64_t y_stride) {
  HWY_DYNAMIC_DISPATCH(DotTileImpl)(type, w, w_stride, rows, cols, act, y, y_stride);
}

}  // namespace attnserve
#endif  // HWY_ONCE
