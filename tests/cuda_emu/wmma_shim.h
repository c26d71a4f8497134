// nvcuda::wmma for the emulator (device_shims.h). The fragments' layout is
// opaque to the kernels, which only fill, load, multiply and store them, so
// here lane 0 of the warp holds the whole tile, in fp32 (fp16 inputs widen
// exactly, and their products are exact in fp32, as on the tensor cores),
// and does each operation for the warp; the other lanes' fragments are
// never read. Loads and stores are warp-collective: all 32 lanes must take
// part, with the same pointer and stride, or the launch fails.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "tests/cuda_emu/emulator.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  float tile[kRows * kCols];  // row-major; lane 0's only
};

namespace emulated {

inline float Widen(float x) { return x; }
inline float Widen(__half x) { return __half2float(x); }

// The whole warp is here with the same pointer and stride (one exchange: a
// user-space address has 16 bits free above it); true in lane 0, which
// does the operation.
inline bool Collective(const void* p, unsigned ldm) {
  const uint64_t mine = reinterpret_cast<uintptr_t>(p) | (static_cast<uint64_t>(ldm) << 48);
  const uint64_t* all = ::attnserve::emu::WarpExchange(0xffffffffu, mine);
  for (int i = 0; i < 32; ++i) {
    if (all[i] != mine) ::attnserve::emu::Fail("wmma: lanes disagree on a tile");
  }
  return ::attnserve::emu::Lane() == 0;
}

template <typename F, typename T>
void Load(F& f, const T* p, unsigned ldm, bool col_major) {
  if (!Collective(p, ldm)) return;
  for (int r = 0; r < F::kRows; ++r) {
    for (int c = 0; c < F::kCols; ++c) f.tile[r * F::kCols + c] = Widen(col_major ? p[c * ldm + r] : p[r * ldm + c]);
  }
}

}  // namespace emulated

// Fills and products touch no memory: lane 0 does them without waiting for
// the warp, whose loads and stores are what it must agree on.
template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
  if (::attnserve::emu::Lane() != 0) return;
  for (float& x : f.tile) x = v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  emulated::Load(f, p, ldm, std::is_same_v<Layout, col_major>);
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  emulated::Load(f, p, ldm, layout == mem_col_major);
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  if (!emulated::Collective(p, ldm)) return;
  for (int r = 0; r < M; ++r) {
    for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.tile[r * N + c];
  }
}

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LayoutA>& a,
              const fragment<matrix_b, M, N, K, T, LayoutB>& b, const fragment<accumulator, M, N, K, float>& c) {
  if (::attnserve::emu::Lane() != 0) return;
  float out[M * N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float acc = c.tile[i * N + j];
      for (int k = 0; k < K; ++k) acc += a.tile[i * K + k] * b.tile[k * N + j];
      out[i * N + j] = acc;
    }
  }
  for (int i = 0; i < M * N; ++i) d.tile[i] = out[i];
}

}  // namespace nvcuda::wmma
