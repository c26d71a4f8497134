// The CUDA runtime calls the project makes (see runtime.h), on the host.
#include "tests/cuda_emu/runtime.h"

#include "tests/cuda_emu/emulator.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace attnserve::emu {
namespace {

using Op = std::function<absl::Status()>;

struct Graph {
  std::vector<Op> ops;
};

struct Stream {
  std::unique_ptr<Graph> capture;  // set while captured
};

// The emulated device: its memory (ATTNSERVE_EMULATED_GPU_MEMORY bytes,
// 3 GiB unless set: the backend keeps 512 MiB beside its KV cache), its
// allocations and the runtime's error state.
struct Device {
  std::mutex mu;
  size_t total = 0, used = 0;
  std::map<void*, size_t> allocations;
  cudaError_t last_error = cudaSuccess;
  cudaError_t sticky_error = cudaSuccess;
  Stream legacy;  // stream 0
  // Streams being captured, and whether a call that capture forbids (an
  // allocation, a synchronous copy) was made meanwhile: the device then
  // invalidates the capture, whichever its mode.
  int capturing = 0;
  bool capture_invalidated = false;
};

Device& Dev() {
  static Device* const d = [] {
    auto* dev = new Device;
    const char* env = std::getenv("ATTNSERVE_EMULATED_GPU_MEMORY");
    dev->total = env != nullptr ? std::strtoull(env, nullptr, 10) : (size_t{3} << 30);
    return dev;
  }();
  return *d;
}

Stream& StreamOf(cudaStream_t s) { return s == nullptr ? Dev().legacy : *reinterpret_cast<Stream*>(s); }

cudaError_t Report(cudaError_t e) {
  Dev().last_error = e;
  return e;
}

// What a call must return before doing anything: a sticky error, or a call
// that capture forbids while a stream is captured.
cudaError_t Check(bool unsafe_during_capture) {
  Device& d = Dev();
  if (d.sticky_error != cudaSuccess) return d.sticky_error;
  if (unsafe_during_capture && d.capturing > 0) {
    d.capture_invalidated = true;
    return Report(cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

cudaError_t Run(const Op& op) {
  if (absl::Status s = op(); !s.ok()) {
    std::fprintf(stderr, "attnserve CUDA emulator: %s\n", std::string(s.message()).c_str());
    Dev().sticky_error = cudaErrorLaunchFailure;
    return Report(cudaErrorLaunchFailure);
  }
  return cudaSuccess;
}

}  // namespace

void Enqueue(cudaStream_t stream, Op op) {
  if (Dev().sticky_error != cudaSuccess) return;
  Stream& s = StreamOf(stream);
  if (s.capture) {
    s.capture->ops.push_back(std::move(op));
    return;
  }
  Run(op);
}

}  // namespace attnserve::emu

using attnserve::emu::Dev;
using attnserve::emu::Graph;
using attnserve::emu::Stream;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? attnserve::emu::Check(false) : attnserve::emu::Report(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return attnserve::emu::Report(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "attnserve CUDA emulator");
  prop->totalGlobalMem = Dev().total;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->sharedMemPerBlockOptin = attnserve::emu::kMaxSharedBytes;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->multiProcessorCount = 1;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = Dev().sticky_error != cudaSuccess ? Dev().sticky_error : Dev().last_error;
  Dev().last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device)";
    case cudaErrorLaunchFailure: return "a kernel failed under the emulator (see stderr)";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    default: return "emulated CUDA error";
  }
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (cudaError_t e = attnserve::emu::Check(true); e != cudaSuccess) return e;
  auto& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  const size_t rounded = (size + 255) / 256 * 256;
  if (d.used + rounded > d.total) return attnserve::emu::Report(cudaErrorMemoryAllocation);
  void* p = std::aligned_alloc(256, rounded == 0 ? 256 : rounded);
  if (p == nullptr) return attnserve::emu::Report(cudaErrorMemoryAllocation);
  // NaN where read before written, as a device's fresh memory may be; not
  // for the KV cache and weights' sizes, which would only cost host memory.
  if (rounded <= (size_t{64} << 20)) std::memset(p, 0xff, rounded);
  d.allocations[p] = rounded;
  d.used += rounded;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  auto& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  auto it = d.allocations.find(ptr);
  if (it == d.allocations.end()) return attnserve::emu::Report(cudaErrorInvalidValue);
  d.used -= it->second;
  d.allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  auto& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  *total_bytes = d.total;
  *free_bytes = d.total - d.used;
  return attnserve::emu::Check(false);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind) {
  if (cudaError_t e = attnserve::emu::Check(true); e != cudaSuccess) return e;
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t count) {
  if (cudaError_t e = attnserve::emu::Check(true); e != cudaSuccess) return e;
  std::memset(dst, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind, cudaStream_t stream) {
  if (cudaError_t e = attnserve::emu::Check(false); e != cudaSuccess) return e;
  attnserve::emu::Enqueue(stream, [=] {
    std::memmove(dst, src, count);
    return absl::OkStatus();
  });
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  if (cudaError_t e = attnserve::emu::Check(false); e != cudaSuccess) return e;
  attnserve::emu::Enqueue(stream, [=] {
    std::memset(dst, value, count);
    return absl::OkStatus();
  });
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = reinterpret_cast<cudaStream_t>(new Stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<Stream*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (attnserve::emu::StreamOf(stream).capture) return attnserve::emu::Report(cudaErrorStreamCaptureUnsupported);
  return attnserve::emu::Check(false);
}

cudaError_t cudaDeviceSynchronize(void) { return attnserve::emu::Check(true); }

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int value) {
  return static_cast<size_t>(value) <= attnserve::emu::kMaxSharedBytes ? cudaSuccess
                                                                       : attnserve::emu::Report(cudaErrorInvalidValue);
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (cudaError_t e = attnserve::emu::Check(false); e != cudaSuccess) return e;
  Stream& s = attnserve::emu::StreamOf(stream);
  if (stream == nullptr || s.capture) return attnserve::emu::Report(cudaErrorIllegalState);
  s.capture = std::make_unique<Graph>();
  Dev().capture_invalidated = false;
  ++Dev().capturing;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  Stream& s = attnserve::emu::StreamOf(stream);
  if (!s.capture) return attnserve::emu::Report(cudaErrorIllegalState);
  --Dev().capturing;
  std::unique_ptr<Graph> g = std::move(s.capture);
  *graph = nullptr;
  if (Dev().capture_invalidated) {
    return attnserve::emu::Report(cudaErrorStreamCaptureInvalidated);
  }
  *graph = reinterpret_cast<cudaGraph_t>(g.release());
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete reinterpret_cast<Graph*>(graph);
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  *exec = reinterpret_cast<cudaGraphExec_t>(new Graph(*reinterpret_cast<Graph*>(graph)));
  return cudaSuccess;
}

cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo* info) {
  auto* e = reinterpret_cast<Graph*>(exec);
  const auto* g = reinterpret_cast<const Graph*>(graph);
  if (info != nullptr) *info = cudaGraphExecUpdateResultInfo{};
  // A graph of another shape needs a new instance, as on a device.
  if (e->ops.size() != g->ops.size()) {
    if (info != nullptr) info->result = cudaGraphExecUpdateErrorTopologyChanged;
    return attnserve::emu::Report(cudaErrorGraphExecUpdateFailure);
  }
  e->ops = g->ops;
  if (info != nullptr) info->result = cudaGraphExecUpdateSuccess;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete reinterpret_cast<Graph*>(exec);
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (cudaError_t e = attnserve::emu::Check(false); e != cudaSuccess) return e;
  for (const auto& op : reinterpret_cast<const Graph*>(exec)->ops) attnserve::emu::Enqueue(stream, op);
  return attnserve::emu::Check(false);
}

}  // extern "C"
