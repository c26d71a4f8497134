#include "engine/backend/cuda/step_graphs.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <utility>

#include "kernels/cuda/device.h"

namespace attnserve {

struct StepGraphs::Graph {
  int32_t batch = 0;
  std::vector<uintptr_t> signature;  // exec's
  std::vector<uintptr_t> warmed;     // run once without a graph
  cudaGraphExec_t exec = nullptr;
  uint64_t last_used = 0;

  ~Graph() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
};

StepGraphs::StepGraphs(void* stream) : stream_(stream) {}
StepGraphs::~StepGraphs() = default;

void StepGraphs::DropLeastRecentlyUsed() {
  const auto oldest = std::min_element(graphs_.begin(), graphs_.end(),
                                       [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
  if (oldest != graphs_.end()) graphs_.erase(oldest);
}

absl::Status StepGraphs::Capture(Graph& g, std::vector<uintptr_t> signature, absl::FunctionRef<absl::Status()> enqueue) {
  const auto stream = static_cast<cudaStream_t>(stream_);
  // Thread-local: other threads' CUDA calls (another engine, a test's own
  // copies) neither break the capture nor are refused during it.
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    cudaGetLastError();
    disabled_ = true;
    return absl::OkStatus();
  }
  const absl::Status enqueued = enqueue();
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  const std::unique_ptr<CUgraph_st, cudaError_t (*)(cudaGraph_t)> owned(graph, cudaGraphDestroy);
  if (!enqueued.ok()) {
    // The step's own error (which may also have ended the capture): nothing
    // ran, and graphs stay on for the steps after it.
    cudaGetLastError();
    return enqueued;
  }
  if (ended != cudaSuccess) {
    // A launch the capture could not take: not the step's fault.
    cudaGetLastError();
    disabled_ = true;
    return absl::OkStatus();
  }
  if (g.exec != nullptr) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(g.exec, graph, &info) != cudaSuccess) {
      cudaGetLastError();
      cudaGraphExecDestroy(g.exec);
      g.exec = nullptr;
    }
  }
  if (g.exec == nullptr && cudaGraphInstantiate(&g.exec, graph, 0) != cudaSuccess) {
    cudaGetLastError();
    g.exec = nullptr;
    disabled_ = true;
    return absl::OkStatus();
  }
  g.signature = std::move(signature);
  ++captures_;
  return absl::OkStatus();
}

absl::Status StepGraphs::Run(int32_t batch, std::vector<uintptr_t> signature, absl::FunctionRef<absl::Status()> enqueue) {
  if (disabled_) return enqueue();
  auto it = std::find_if(graphs_.begin(), graphs_.end(), [batch](const auto& g) { return g->batch == batch; });
  if (it == graphs_.end()) {
    if (graphs_.size() >= kMaxGraphs) DropLeastRecentlyUsed();
    graphs_.push_back(std::make_unique<Graph>());
    graphs_.back()->batch = batch;
    it = graphs_.end() - 1;
  }
  Graph& g = **it;
  g.last_used = ++clock_;
  if (g.exec != nullptr && g.signature == signature) {
    ++replays_;
  } else if (g.warmed != signature) {
    g.warmed = std::move(signature);
    return enqueue();
  } else {
    if (absl::Status s = Capture(g, std::move(signature), enqueue); !s.ok()) return s;
    if (disabled_) {
      graphs_.clear();
      return enqueue();
    }
  }
  const cudaError_t launched = cudaGraphLaunch(g.exec, static_cast<cudaStream_t>(stream_));
  // Not left behind for the next step's first launch to report.
  if (launched != cudaSuccess) cudaGetLastError();
  return CudaErrorToStatus(launched, "cudaGraphLaunch");
}

}  // namespace attnserve
