// Prometheus metrics of the server (DESIGN.md §6), prefix attnserve_.
//
// Names mirror vLLM's so existing dashboards translate. Every label takes
// values from a fixed set (finish reasons, status codes, policy kinds, step
// phases), never client text, so the number of series stays bounded. All
// recording methods are thread-safe and cheap (atomic adds).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prometheus {
class Registry;
class Exposer;
}  // namespace prometheus

namespace attnserve {

// Phases of an engine step, by what its batch holds.
enum class StepPhase { kPrefill, kDecode, kMixed };

class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Latencies of one request, in seconds.
  void ObserveQueueTime(double seconds);
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  void ObserveE2eLatency(double seconds);
  void ObserveStepTime(StepPhase phase, double seconds);

  void SetRunning(int64_t n);
  void SetWaiting(int64_t n);
  void SetKvCacheUsage(double ratio);
  // Summed over the sequences of the linear mode (constant per sequence).
  void SetLinearStateBytes(int64_t bytes);

  void AddPromptTokens(int64_t n);
  void AddGenerationTokens(int64_t n);
  // finish_reason: "stop", "length" or "abort".
  void CountSuccess(std::string_view finish_reason);
  void CountError(absl::StatusCode code);
  void AddPreemptions(int64_t n);
  void AddPrefixCacheTokens(int64_t queried, int64_t hit);
  // Engine steps run from CUDA graphs: replayed, and captured then run;
  // and the padding rows of decode steps (Backend::GraphCounts).
  void AddGraphSteps(int64_t replayed, int64_t captured, int64_t padding_rows);

  // Policy metrics. mode, sink, calibration: the policy kinds of the request
  // ("dense", "streaming", "act", ...; "none" for no calibration).
  void CountRequest(std::string_view mode, std::string_view sink, std::string_view calibration);
  void AddAttentionPages(int64_t read, int64_t visible);
  void AddEvictedPages(int64_t n);
  // One (layer, KV head)'s share of a page (DuoAttention's streaming heads).
  void AddEvictedHeadSlices(int64_t n);

  std::shared_ptr<prometheus::Registry> registry() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Serves a Metrics registry on http://<bind_address>/metrics.
class MetricsExposer {
 public:
  MetricsExposer(MetricsExposer&&) noexcept;
  MetricsExposer& operator=(MetricsExposer&&) noexcept;
  ~MetricsExposer();
  int port() const { return port_; }

 private:
  friend absl::StatusOr<MetricsExposer> StartExposer(Metrics& metrics, const std::string& bind_address);
  MetricsExposer(std::unique_ptr<prometheus::Exposer> exposer, int port);
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// bind_address is "host:port"; port 0 picks a free one (see port()).
// UNAVAILABLE when the address cannot be bound.
absl::StatusOr<MetricsExposer> StartExposer(Metrics& metrics, const std::string& bind_address);

}  // namespace attnserve
