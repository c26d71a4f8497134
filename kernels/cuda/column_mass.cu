#include "kernels/cuda/column_mass.h"

#include "kernels/cuda/column_mass_kernels.cuh"
#include "kernels/cuda/launch.cuh"

namespace attnserve {

absl::Status ColumnMassCuda(const ColumnMassArgs& a, void* stream) {
  return RunColumnMass(a, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
