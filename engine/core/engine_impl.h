// Engine internals shared by engine.cc (API) and engine_loop.cc (thread).
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/core/engine.h"
#include "engine/core/sequence.h"
#include "engine/kv/prefix_cache.h"
#include "engine/scheduler/scheduler.h"

namespace attnserve {

// Scoring needs the logits of every token: its chunks are kept small so a
// step's logits stay a few tens of MB.
inline constexpr int32_t kScoreChunkTokens = 128;

struct Engine::Impl {
  Impl(const Model& m, const EngineOptions& o, Metrics* metrics_sink, KvCachePool p)
      : model(m),
        options(o),
        metrics(metrics_sink),
        pool(std::move(p)),
        allocator(pool.num_pages()),
        prefix_cache(allocator, o.page_size),
        scheduler({o.max_num_seqs, o.max_num_batched_tokens, o.page_size}, allocator, prefix_cache) {}

  void Loop();
  void AdmitNew(std::vector<std::unique_ptr<RequestState>>& incoming);
  void StartSequence(Sequence& seq);
  void AllocateLinearStates(ScheduleOutput& schedule);
  // The backend failed for good: every request held fails, new ones are refused.
  void TurnUnhealthy(absl::Status why);
  void FailAll(const absl::Status& why);
  int64_t LinearStateBytesHeld() const;
  void UnparkLinear();
  void RunStep(const ScheduleOutput& schedule);
  void ReleaseHiddenPages(Sequence& seq);
  void CountAttentionPages(const ScheduleOutput& schedule);
  void AfterToken(Sequence& seq, int32_t token, const SampledToken& sampled);
  void AfterScoreRows(Sequence& seq, int32_t first_pos, int32_t n, const float* rows);
  void FinishSequence(Sequence& seq, FinishReason reason, absl::Status error);
  void FailRequest(RequestState& r, absl::Status error);
  void FlushOutputs();
  void ExpireDeadlines(absl::Time now);
  void PublishStats(const ScheduleOutput& schedule);

  const Model& model;
  EngineOptions options;
  Metrics* metrics;
  KvCachePool pool;
  PageAllocator allocator;
  PrefixCache prefix_cache;
  Scheduler scheduler;
  std::unique_ptr<Backend> backend;
  Backend::GraphCounts graph_counts_counted;  // what metrics have of backend->graph_counts()
  // Linear sequences out of the scheduler until state memory frees: each
  // with the bytes of states held when it was parked.
  std::vector<std::pair<Sequence*, int64_t>> parked_linear;
  std::vector<int32_t> eog_ids;

  // Shared with callers (mu).
  mutable std::mutex mu;
  absl::Status health;  // Backend::health once it failed
  // Held while the listener is set or called, so that a caller that
  // clears it knows no call is still running.
  std::mutex listener_mu;
  std::function<void(const absl::Status&)> health_listener;  // listener_mu
  std::condition_variable wake;       // the engine thread
  std::condition_variable idle;       // Drain waiters
  std::vector<std::unique_ptr<RequestState>> inbox;
  std::vector<std::pair<uint64_t, absl::Status>> aborts;
  int32_t queued = 0;                 // submitted and not finished
  bool draining = false;
  absl::Time drain_deadline = absl::InfiniteFuture();
  bool stopping = false;
  uint64_t next_handle = 1;
  EngineStats stats;

  // Engine thread only.
  std::unordered_map<uint64_t, std::unique_ptr<RequestState>> requests;
  uint64_t next_arrival = 0;
  std::vector<float> logits;
  std::vector<SequenceStep> steps;
  std::thread thread;
};

}  // namespace attnserve
