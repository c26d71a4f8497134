// Warp-wide tensor-core pieces (sm_80 and later): the mma.sync fp16
// product of a 16×16 tile by a 16×8 one with fp32 sums, and ldmatrix,
// which loads its operands from shared memory in the fragment layout the
// product takes. Fragments are registers spread over the warp's lanes, as
// the PTX ISA lays them out (lane = 4 · group + thread in group):
//   A (16×16, row-major), four half pairs: rows group and group + 8,
//     columns 2 · thread + {0, 1} and the same + 8;
//   B (16×8, column-major), two half pairs: rows 2 · thread + {0, 1} and
//     the same + 8, column group;
//   C and D (16×8 fp32), four floats: rows group and group + 8, columns
//     2 · thread + {0, 1}.
// Device code only; under ATTN_CUDA_EMULATION (tests/cuda_emu/mma_shim.h)
// the emulator's, which builds the tiles from the same fragments.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace attnserve {

// Four 8×8 fp16 matrices from shared memory (ldmatrix .x4): lanes 8i to
// 8i + 7 give the addresses of matrix i's rows (16 bytes each, 16-byte
// aligned), and r[i] is this lane's pair of matrix i: row lane / 4, columns
// 2 · (lane % 4) + {0, 1}; transposed, column lane / 4 of rows
// 2 · (lane % 4) + {0, 1}.
template <bool kTransposed>
__device__ __forceinline__ void LoadMatrices(uint32_t (&r)[4], const __half* row) {
#ifdef ATTN_CUDA_EMULATION
  emu::LoadMatrices(r, row, kTransposed);
#else
  const auto shared = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTransposed) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared));
  }
#endif
}

// d += a · (b0, b1): A 16×16 by B 16×8, fp16 inputs, fp32 sums.
__device__ __forceinline__ void MmaF16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef ATTN_CUDA_EMULATION
  emu::MmaF16(d, a, b0, b1);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two fp32 values as an fp16 pair (round to nearest), x in the low half.
__device__ __forceinline__ uint32_t PackHalves(float x, float y) {
  const __half2 h = __floats2half2_rn(x, y);
  uint32_t bits;
  memcpy(&bits, &h, sizeof(bits));
  return bits;
}

}  // namespace attnserve
