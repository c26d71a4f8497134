// The serving engine: owns the backend, the KV cache, the prefix cache and
// the scheduler, and runs engine steps on its own thread. Requests come in
// through Submit from any thread; outputs leave through OutputStreams.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/backend/backend.h"
#include "engine/core/output_stream.h"
#include "engine/core/request.h"
#include "engine/model/model.h"

namespace attnserve {

class Metrics;

struct EngineOptions {
  int32_t max_num_seqs = 64;             // sequences running at once
  int32_t max_num_batched_tokens = 512;  // tokens per engine step (chunked prefill)
  int64_t kv_cache_bytes = 256ll << 20;  // KV pool size
  int32_t page_size = 16;                // tokens per KV page
  int32_t max_waiting = 1024;            // queued requests before RESOURCE_EXHAUSTED
  bool prefix_caching = true;
  int num_threads = 2;
  // "cpu", "cuda", or "auto": cuda when this build has it and a device is
  // present, else cpu.
  std::string backend = "cpu";
  // cuda: the share of the device's memory the process may take (weights,
  // activations, KV cache); the KV cache gets what is left of it, and
  // kv_cache_bytes does not apply.
  double gpu_memory_utilization = 0.9;
  // cuda: decode steps replay CUDA graphs (false: each kernel launched).
  bool cuda_graphs = true;
  // Memory for the linear mode's states (LinearAttentionState, one per
  // sequence): a sequence whose state would pass it waits for others to
  // finish, one larger than all of it fails. On cuda it is set aside before
  // the KV cache is sized. 0: no budget of its own, the states take what
  // memory is left.
  int64_t linear_state_bytes = 0;
};

struct EngineStats {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t kv_pages_total = 0;
  int32_t kv_pages_used = 0;  // held by sequences (cached-only pages are free)
  int64_t preemptions_total = 0;
};

struct ScoreResult {
  std::vector<int32_t> token_ids;
  std::vector<float> token_logprobs;  // [0] = 0: the first token has no context
  double perplexity = 0.0;
};

class Engine {
 public:
  // `model` must outlive the engine; `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Model& model, const EngineOptions& options,
                                                       Metrics* metrics);
  // The same with a backend of the caller's over a host KV pool of
  // options.kv_cache_bytes (the pool outlives the backend): a CPU backend
  // with other options, or one wrapped to fail (tests).
  using BackendFactory = std::function<absl::StatusOr<std::unique_ptr<Backend>>(const Model&, KvCachePool&)>;
  static absl::StatusOr<std::unique_ptr<Engine>> CreateWithBackend(const Model& model, const EngineOptions& options,
                                                                  Metrics* metrics, const BackendFactory& backend);
  ~Engine();  // aborts what is left and joins the engine thread

  // Queues a request; outputs go to `out`. RESOURCE_EXHAUSTED when the
  // waiting queue is full or the prompt can never fit in the KV cache,
  // UNAVAILABLE while draining or once the backend is unhealthy. Returns the
  // handle for Abort.
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, std::shared_ptr<OutputStream> out);

  // Drops the request (cancelled by the client, deadline passed): its pages
  // are freed on the engine thread's next iteration and its stream gets a
  // final delta with finish ABORT and `reason` as error. Unknown or finished
  // handles are ignored.
  void Abort(uint64_t handle, absl::Status reason);

  // Per-token log-probabilities of `token_ids` under `attention` (null:
  // dense), computed by the engine thread between generation steps. Blocks
  // the caller.
  absl::StatusOr<ScoreResult> Score(std::vector<int32_t> token_ids, std::shared_ptr<const AttentionPlan> attention,
                                    absl::Time deadline);

  // Refuses new requests (UNAVAILABLE), lets running and waiting requests
  // finish until `timeout`, then aborts the rest. Returns when all are done.
  void Drain(absl::Duration timeout);

  // OK until the backend fails for good (Backend::health); then every
  // request held fails with that status (UNAVAILABLE) and new ones are
  // refused with it.
  absl::Status health() const;
  // Called on the engine thread when health() turns bad (at once, on the
  // caller's, if it is already); null stops the calls, and returns once no
  // call runs. The server turns its gRPC health to NOT_SERVING, so that an
  // orchestrator restarts it.
  void SetHealthListener(std::function<void(const absl::Status&)> listener);

  EngineStats stats() const;
  const Model& model() const;
  const EngineOptions& options() const;
  std::string backend_name() const;  // the backend chosen: "cpu" or "cuda"
  std::string device() const;        // its processor's name

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  static std::unique_ptr<Engine> Start(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnserve
