// The emulated CUDA runtime (built with -DATTNSERVE_CUDA_EMULATION=ON):
// graphs record what a captured stream is given, with the kernel arguments
// of the moment, and replay it; what capture forbids invalidates it; a
// kernel that fails leaves the sticky error a device fault would.
#include "tests/cuda_emu/device_shims.h"  // first: the kernels below compile for the emulator

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"

namespace attnserve {
namespace {

__global__ void AddToEach(int* x, int n, int value) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) x[i] += value;
}

__global__ void WaitsForAnExitedLane(int* x) {
  if (threadIdx.x == 0) return;
  x[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

class CudaRuntimeEmulationTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess); }
  void TearDown() override { cudaStreamDestroy(stream_); }
  cudaStream_t stream_ = nullptr;
};

TEST_F(CudaRuntimeEmulationTest, GraphsReplayTheCapturedLaunchesWithTheirArguments) {
  constexpr int kN = 300;
  DeviceBuffer buf = DeviceBuffer::Allocate(kN * sizeof(int)).value();
  std::vector<int> host(kN, 0);
  ASSERT_TRUE(buf.CopyFromHost(host.data(), kN * sizeof(int)).ok());
  const StreamLauncher launch{stream_};
  int value = 5;
  ASSERT_EQ(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_TRUE(launch("AddToEach", AddToEach, dim3(3), dim3(128), 0, buf.as<int>(), kN, value).ok());
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream_, &graph), cudaSuccess);
  value = 1000;  // the graph keeps the argument it was captured with
  ASSERT_TRUE(buf.CopyToHost(host.data(), kN * sizeof(int)).ok());
  EXPECT_EQ(host[kN - 1], 0) << "a captured launch ran";
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream_), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream_), cudaSuccess);
  ASSERT_TRUE(CudaStreamSync(stream_).ok());
  ASSERT_TRUE(buf.CopyToHost(host.data(), kN * sizeof(int)).ok());
  for (int i = 0; i < kN; ++i) ASSERT_EQ(host[i], 10) << i;
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_F(CudaRuntimeEmulationTest, AnAllocationDuringCaptureInvalidatesIt) {
  ASSERT_EQ(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_FALSE(DeviceBuffer::Allocate(1024).ok());
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream_, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(graph, nullptr);
  cudaGetLastError();
  EXPECT_TRUE(DeviceBuffer::Allocate(1024).ok());  // outside a capture again
}

// Last: the error it leaves is the process's for good, as on a device.
TEST_F(CudaRuntimeEmulationTest, AFailedKernelLeavesAStickyError) {
  DeviceBuffer buf = DeviceBuffer::Allocate(32 * sizeof(int)).value();
  const StreamLauncher launch{stream_};
  // Not captured, the stream runs it at once: the launch reports it.
  EXPECT_FALSE(launch("WaitsForAnExitedLane", WaitsForAnExitedLane, dim3(1), dim3(32), 0, buf.as<int>()).ok());
  const cudaError_t synced = cudaStreamSynchronize(stream_);
  EXPECT_EQ(synced, cudaErrorLaunchFailure);
  EXPECT_TRUE(CudaErrorIsSticky(synced));
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure) << "not sticky";
}

}  // namespace
}  // namespace attnserve
