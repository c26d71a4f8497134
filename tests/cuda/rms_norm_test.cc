// RmsNormCuda against the CPU reference (DESIGN.md §8), on the GPU and on
// the host under the emulator (every machine). GPU cases skip with the
// reason where no device is present (fail instead when ATTNSERVE_REQUIRE_GPU
// is set, as scripts/gpu-check.sh does, so a GPU machine whose device is
// invisible cannot pass by skipping); argument checks, the no-device error
// path and the shared per-element math run everywhere.
#include "tests/cuda_emu/device_shims.h"  // first: the kernel compiles for the emulator
#include "kernels/cuda/rms_norm_kernels.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
#include "kernels/common/rms_norm_math.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_memory.h"

namespace attnserve {
namespace {

constexpr float kEps = 1e-5f;

// Float accumulation order differs between the block reduction and the
// reference; a few ulps of the sum of squares, never more.
float FloatTolerance(float want) { return 1e-5f + 2e-5f * std::fabs(want); }
// One bf16 ulp: both sides round, and a reference value that sits on a
// rounding boundary may go either way.
float Bf16Tolerance(float want) { return 1e-6f + std::fabs(want) / 128.0f; }

struct Inputs {
  std::vector<float> x, weight, want;
};

Inputs MakeInputs(int64_t rows, int64_t n) {
  Inputs in;
  std::mt19937 rng(static_cast<uint32_t>(n * 1009 + rows));
  std::uniform_real_distribution<float> val(-2.0f, 2.0f), w(0.5f, 1.5f);
  in.x.resize(rows * n);
  in.weight.resize(n);
  for (auto& v : in.x) v = val(rng);
  for (auto& v : in.weight) v = w(rng);
  // An all-zero row (eps keeps it finite) and a large-magnitude row.
  if (rows > 1) std::fill(in.x.begin() + n, in.x.begin() + 2 * n, 0.0f);
  if (rows > 2) for (int64_t i = 2 * n; i < 3 * n; ++i) in.x[i] *= 1e4f;
  in.want.resize(rows * n);
  RmsNormReference(in.x.data(), in.weight.data(), in.want.data(), rows, n, kEps);
  return in;
}

absl::Status Norm(KernelBackend backend, const float* x, const float* weight, float* y, int64_t rows, int64_t n) {
  if (backend == KernelBackend::kEmulator) return RunRmsNorm(x, weight, y, rows, n, kEps, emu::Launcher{});
  if (absl::Status s = RmsNormCuda(x, weight, y, rows, n, kEps, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

absl::Status NormBf16(KernelBackend backend, const float* x, const float* weight, uint16_t* y, int64_t rows,
                      int64_t n) {
  if (backend == KernelBackend::kEmulator) return RunRmsNormBf16(x, weight, y, rows, n, kEps, emu::Launcher{});
  if (absl::Status s = RmsNormCudaBf16(x, weight, y, rows, n, kEps, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

// `v` after `offset` elements of a fresh buffer (offset 1 misaligns it);
// the buffer is the returned pointer - offset.
template <typename T>
T* UploadAt(KernelMemory& memory, const std::vector<T>& v, size_t offset) {
  std::vector<T> padded(offset, T{});
  padded.insert(padded.end(), v.begin(), v.end());
  return memory.Upload(padded) + offset;
}

void ExpectMatches(const std::vector<float>& got, const std::vector<float>& want, int64_t n) {
  ASSERT_EQ(got.size(), want.size());
  int failures = 0;
  for (size_t i = 0; i < got.size() && failures < 10; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= FloatTolerance(want[i]))) {
      ADD_FAILURE() << "row " << i / n << " col " << i % n << ": got " << got[i] << " want " << want[i];
      ++failures;
    }
  }
}

using SizeParam = std::tuple<KernelBackend, int64_t, int64_t>;  // backend, n, rows

class RmsNormCudaTest : public ::testing::TestWithParam<SizeParam> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(backend()); }
  KernelBackend backend() const { return std::get<0>(GetParam()); }
  int64_t n() const { return std::get<1>(GetParam()); }
  int64_t rows() const { return std::get<2>(GetParam()); }
};

TEST_P(RmsNormCudaTest, MatchesReference) {
  const Inputs in = MakeInputs(rows(), n());
  KernelMemory memory(backend());
  float* y = memory.Allocate<float>(in.x.size());
  const absl::Status s = Norm(backend(), memory.Upload(in.x), memory.Upload(in.weight), y, rows(), n());
  ASSERT_TRUE(s.ok()) << s;
  ExpectMatches(memory.Download(y, in.x.size()), in.want, n());
}

TEST_P(RmsNormCudaTest, InPlace) {
  const Inputs in = MakeInputs(rows(), n());
  KernelMemory memory(backend());
  float* x = memory.Upload(in.x);
  const absl::Status s = Norm(backend(), x, memory.Upload(in.weight), x, rows(), n());
  ASSERT_TRUE(s.ok()) << s;
  ExpectMatches(memory.Download(x, in.x.size()), in.want, n());
}

// Pointers off a 16-byte boundary must take the scalar path, not fault.
TEST_P(RmsNormCudaTest, Misaligned) {
  const Inputs in = MakeInputs(rows(), n());
  KernelMemory memory(backend());
  float* y = memory.Allocate<float>(in.x.size() + 1);
  const absl::Status s = Norm(backend(), UploadAt(memory, in.x, 1), UploadAt(memory, in.weight, 1), y + 1, rows(), n());
  ASSERT_TRUE(s.ok()) << s;
  std::vector<float> got = memory.Download(y, in.x.size() + 1);
  got.erase(got.begin());
  ExpectMatches(got, in.want, n());
}

TEST_P(RmsNormCudaTest, Bf16OutputMatchesReference) {
  const Inputs in = MakeInputs(rows(), n());
  KernelMemory memory(backend());
  uint16_t* y = memory.Allocate<uint16_t>(in.x.size());
  const absl::Status s = NormBf16(backend(), memory.Upload(in.x), memory.Upload(in.weight), y, rows(), n());
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<uint16_t> got = memory.Download(y, in.x.size());
  int failures = 0;
  for (size_t i = 0; i < got.size() && failures < 10; ++i) {
    const float g = Bf16ToFloat(got[i]);
    if (!(std::fabs(g - in.want[i]) <= Bf16Tolerance(in.want[i]))) {
      ADD_FAILURE() << "row " << i / n() << " col " << i % n() << ": got " << g << " want " << in.want[i];
      ++failures;
    }
  }
}

std::string SizeName(const ::testing::TestParamInfo<SizeParam>& info) {
  const auto [backend, n, rows] = info.param;
  return absl::StrCat(KernelBackendName({backend, 0}), "_n", n, "_rows", rows);
}

INSTANTIATE_TEST_SUITE_P(Sizes, RmsNormCudaTest,
                         ::testing::Combine(::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator),
                                            ::testing::Values(1, 3, 17, 63, 64, 65, 576, 1000, 4096),
                                            ::testing::Values(1, 2, 7, 64)),
                         SizeName);

// Checked before any CUDA call, so these need no device.
TEST(RmsNormCudaArgs, RejectsBadShapes) {
  float dummy = 0.0f;
  EXPECT_EQ(RmsNormCuda(&dummy, &dummy, &dummy, 1, 0, kEps, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RmsNormCuda(&dummy, &dummy, &dummy, -1, 4, kEps, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RmsNormCuda(nullptr, &dummy, &dummy, 1, 4, kEps, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(RmsNormCuda(nullptr, nullptr, nullptr, 0, 4, kEps, nullptr).ok());
}

TEST(CudaDevice, AllocationFailsCleanlyWithoutDevice) {
  std::string why;
  if (CudaDeviceAvailable(&why)) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_NE(why.find("no CUDA device: "), std::string::npos) << why;
  auto buf = DeviceBuffer::Allocate(1024);
  ASSERT_FALSE(buf.ok());
  EXPECT_NE(buf.status().message().find("cudaMalloc"), std::string::npos) << buf.status();
}

TEST(CudaDevice, ErrorMapping) {
  EXPECT_TRUE(CudaErrorToStatus(0, "ctx").ok());
  const absl::Status oom = CudaErrorToStatus(2, "ctx");  // cudaErrorMemoryAllocation
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(oom.message().find("ctx: cudaErrorMemoryAllocation"), std::string::npos) << oom;
  EXPECT_EQ(CudaErrorToStatus(1, "ctx").code(), absl::StatusCode::kInternal);  // cudaErrorInvalidValue
}

// Faults that spoil the context are sticky; failures a caller survives are not.
TEST(CudaDevice, StickyErrors) {
  EXPECT_TRUE(CudaErrorIsSticky(700));    // cudaErrorIllegalAddress
  EXPECT_TRUE(CudaErrorIsSticky(719));    // cudaErrorLaunchFailure
  EXPECT_TRUE(CudaErrorIsSticky(214));    // cudaErrorECCUncorrectable
  EXPECT_FALSE(CudaErrorIsSticky(0));     // cudaSuccess
  EXPECT_FALSE(CudaErrorIsSticky(2));     // cudaErrorMemoryAllocation
  EXPECT_FALSE(CudaErrorIsSticky(900));   // cudaErrorStreamCaptureUnsupported
}

// The device kernel's per-element functions, run on the host.
TEST(RmsNormMath, MatchesReference) {
  for (int64_t n : {1, 17, 576, 4096}) {
    const Inputs in = MakeInputs(3, n);
    for (int64_t r = 0; r < 3; ++r) {
      const float* x = in.x.data() + r * n;
      float sum_sq = 0.0f;
      for (int64_t i = 0; i < n; ++i) sum_sq += x[i] * x[i];
      const float inv = RmsNormInvRms(sum_sq, n, kEps);
      for (int64_t i = 0; i < n; ++i) {
        const float want = in.want[r * n + i];
        ASSERT_NEAR(RmsNormApply(x[i], inv, in.weight[i]), want, FloatTolerance(want)) << "n " << n << " row " << r << " col " << i;
      }
    }
  }
}

}  // namespace
}  // namespace attnserve
