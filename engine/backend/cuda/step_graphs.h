// CUDA graphs of whole decode steps, FlashInfer's plan/run split: the host
// plans a step (BuildStepMetadata) and copies its metadata up; every layer's
// kernels then run from a graph captured once for steps with the same
// LaunchSignature, one launch in place of hundreds. Only the staged data
// differs between replays, and it lies at addresses the graph already holds.
//
// One graph per batch size (BatchPadding keeps them few), the least
// recently used dropped past kMaxGraphs. A signature is captured the second
// time it comes: the first step runs its kernels directly, which loads
// their modules and lets cuBLAS settle, as capture wants. A batch size whose signature changed (its split
// grid grew, a buffer moved) is captured again and its instantiated graph
// updated in place where the topology allows (cudaGraphExecUpdate), else
// rebuilt.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace attnserve {

class StepGraphs {
 public:
  // Every padded batch size up to 480 sequences.
  static constexpr int kMaxGraphs = 64;

  // `stream`: the cudaStream_t the steps run on.
  explicit StepGraphs(void* stream);
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // Enqueues a step of `batch` sequences on the stream: the graph of that
  // batch size when its signature is `signature`, else `enqueue` (which
  // enqueues every kernel of the step on the stream, and nothing else) runs
  // directly or is captured into one first. A capture the driver refuses
  // turns graphs off for good, and `enqueue` runs directly. An error of
  // `enqueue` itself is returned (while capturing, nothing ran), and graphs
  // stay on.
  absl::Status Run(int32_t batch, std::vector<uintptr_t> signature, absl::FunctionRef<absl::Status()> enqueue);

  int64_t replays() const { return replays_; }
  int64_t captures() const { return captures_; }

 private:
  struct Graph;
  // The graph of `batch`, captured from `enqueue` for `signature`.
  absl::Status Capture(Graph& g, std::vector<uintptr_t> signature, absl::FunctionRef<absl::Status()> enqueue);
  void DropLeastRecentlyUsed();

  void* stream_;
  std::vector<std::unique_ptr<Graph>> graphs_;
  uint64_t clock_ = 0;
  bool disabled_ = false;
  int64_t replays_ = 0, captures_ = 0;
};

}  // namespace attnserve
