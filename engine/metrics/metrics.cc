#include "engine/metrics/metrics.h"

#include <array>
#include <exception>
#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace attnserve {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// Buckets from `lo` growing by `factor`: a 135M model on two CPU cores and
// an 8B model on an H100 differ by three orders of magnitude in step time,
// so the ranges span both.
Histogram::BucketBoundaries Geometric(double lo, double factor, int n) {
  Histogram::BucketBoundaries b;
  for (double v = lo; n-- > 0; v *= factor) b.push_back(v);
  return b;
}

Family<Counter>& CounterFamily(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name("attnserve_" + name).Help(help).Register(r);
}
Family<Gauge>& GaugeFamily(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name("attnserve_" + name).Help(help).Register(r);
}
Histogram& SingleHistogram(prometheus::Registry& r, const std::string& name, const std::string& help,
                           const Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name("attnserve_" + name).Help(help).Register(r).Add({}, buckets);
}

constexpr std::array<absl::StatusCode, 17> kCodes = {
    absl::StatusCode::kOk,           absl::StatusCode::kCancelled,         absl::StatusCode::kUnknown,
    absl::StatusCode::kInvalidArgument, absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kNotFound,
    absl::StatusCode::kAlreadyExists, absl::StatusCode::kPermissionDenied, absl::StatusCode::kResourceExhausted,
    absl::StatusCode::kFailedPrecondition, absl::StatusCode::kAborted,     absl::StatusCode::kOutOfRange,
    absl::StatusCode::kUnimplemented, absl::StatusCode::kInternal,         absl::StatusCode::kUnavailable,
    absl::StatusCode::kDataLoss,      absl::StatusCode::kUnauthenticated};

}  // namespace

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *registry;

  Histogram& queue_time = SingleHistogram(r, "request_queue_time_seconds",
                                          "Time from arrival to the first engine step of a request.",
                                          Geometric(0.001, 2, 18));
  Histogram& ttft = SingleHistogram(r, "time_to_first_token_seconds", "Time from arrival to the first token.",
                                    Geometric(0.001, 2, 18));
  Histogram& itl = SingleHistogram(r, "inter_token_latency_seconds", "Time between two tokens of a sequence.",
                                   Geometric(0.0005, 2, 16));
  Histogram& e2e = SingleHistogram(r, "e2e_request_latency_seconds", "Time from arrival to the last token.",
                                   Geometric(0.01, 2, 16));
  Family<Histogram>& step_time = prometheus::BuildHistogram()
                                     .Name("attnserve_engine_step_seconds")
                                     .Help("Duration of one engine step, by the kind of work in its batch.")
                                     .Register(r);
  std::array<Histogram*, 3> step_by_phase = {
      &step_time.Add({{"phase", "prefill"}}, Geometric(0.0005, 2, 16)),
      &step_time.Add({{"phase", "decode"}}, Geometric(0.0005, 2, 16)),
      &step_time.Add({{"phase", "mixed"}}, Geometric(0.0005, 2, 16))};

  Gauge& running = GaugeFamily(r, "num_requests_running", "Sequences in the running batch.").Add({});
  Gauge& waiting = GaugeFamily(r, "num_requests_waiting", "Sequences waiting to be scheduled.").Add({});
  Gauge& kv_usage = GaugeFamily(r, "kv_cache_usage_ratio", "Fraction of KV pages held by sequences.").Add({});
  Gauge& linear_state =
      GaugeFamily(r, "linear_state_bytes", "Memory of the linear attention mode's folded-key states.").Add({});

  Counter& prompt_tokens = CounterFamily(r, "prompt_tokens_total", "Prompt tokens prefilled.").Add({});
  Counter& generation_tokens = CounterFamily(r, "generation_tokens_total", "Tokens generated.").Add({});
  Family<Counter>& success = CounterFamily(r, "request_success_total", "Completions finished, by finish reason.");
  Family<Counter>& errors = CounterFamily(r, "request_errors_total", "Requests failed, by gRPC status code.");
  Counter& preemptions =
      CounterFamily(r, "num_preemptions_total", "Sequences sent back to waiting for memory (KV pages, linear states).")
          .Add({});
  Counter& prefix_queries =
      CounterFamily(r, "prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.").Add({});
  Counter& prefix_hits =
      CounterFamily(r, "prefix_cache_hits_total", "Prompt tokens found in the prefix cache.").Add({});
  Family<Counter>& graph_steps =
      CounterFamily(r, "cuda_graph_steps_total", "Engine steps run from CUDA graphs, replayed or captured then run.");
  Counter& graph_replayed = graph_steps.Add({{"how", "replayed"}});
  Counter& graph_captured = graph_steps.Add({{"how", "captured"}});
  Counter& padding_rows = CounterFamily(r, "decode_padding_rows_total",
                                        "Rows added to decode steps to bring them to a CUDA graph's batch size.")
                              .Add({});
  Family<Counter>& requests = CounterFamily(r, "requests_total", "Requests, by attention policy kind.");
  Counter& pages_read =
      CounterFamily(r, "attention_pages_read_total", "KV pages read by attention (per layer and KV head).").Add({});
  Counter& pages_visible = CounterFamily(r, "attention_pages_visible_total",
                                         "KV pages a dense read would have touched (per layer and KV head).")
                               .Add({});
  Counter& evicted = CounterFamily(r, "kv_evicted_pages_total", "KV pages freed by eviction policies.").Add({});
  Counter& evicted_slices =
      CounterFamily(r, "kv_evicted_head_slices_total",
                    "Per-(layer, KV head) shares of KV pages freed by windowed heads (duo's streaming heads).")
          .Add({});

  std::array<Counter*, kCodes.size()> error_by_code{};
  // requests_total label sets, created on first use; the label values come
  // from a closed set, so the map stays small.
  std::mutex requests_mu;
  std::map<std::string, Counter*> request_series;

  Impl() {
    for (size_t i = 0; i < kCodes.size(); ++i) {
      error_by_code[i] = &errors.Add({{"code", absl::StatusCodeToString(kCodes[i])}});
    }
    for (const char* reason : {"stop", "length", "abort"}) success.Add({{"finish_reason", reason}});
  }
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

void Metrics::ObserveQueueTime(double s) { impl_->queue_time.Observe(s); }
void Metrics::ObserveTimeToFirstToken(double s) { impl_->ttft.Observe(s); }
void Metrics::ObserveInterTokenLatency(double s) { impl_->itl.Observe(s); }
void Metrics::ObserveE2eLatency(double s) { impl_->e2e.Observe(s); }
void Metrics::ObserveStepTime(StepPhase phase, double s) {
  impl_->step_by_phase[static_cast<int>(phase)]->Observe(s);
}
void Metrics::SetRunning(int64_t n) { impl_->running.Set(static_cast<double>(n)); }
void Metrics::SetWaiting(int64_t n) { impl_->waiting.Set(static_cast<double>(n)); }
void Metrics::SetKvCacheUsage(double ratio) { impl_->kv_usage.Set(ratio); }
void Metrics::SetLinearStateBytes(int64_t bytes) { impl_->linear_state.Set(static_cast<double>(bytes)); }
void Metrics::AddPromptTokens(int64_t n) { impl_->prompt_tokens.Increment(static_cast<double>(n)); }
void Metrics::AddGenerationTokens(int64_t n) { impl_->generation_tokens.Increment(static_cast<double>(n)); }
void Metrics::CountSuccess(std::string_view reason) {
  impl_->success.Add({{"finish_reason", std::string(reason)}}).Increment();
}
void Metrics::CountError(absl::StatusCode code) {
  const size_t i = static_cast<size_t>(code);
  impl_->error_by_code[i < kCodes.size() ? i : static_cast<size_t>(absl::StatusCode::kUnknown)]->Increment();
}
void Metrics::AddPreemptions(int64_t n) { impl_->preemptions.Increment(static_cast<double>(n)); }
void Metrics::AddGraphSteps(int64_t replayed, int64_t captured, int64_t padding_rows) {
  impl_->graph_replayed.Increment(static_cast<double>(replayed));
  impl_->graph_captured.Increment(static_cast<double>(captured));
  impl_->padding_rows.Increment(static_cast<double>(padding_rows));
}
void Metrics::AddPrefixCacheTokens(int64_t queried, int64_t hit) {
  impl_->prefix_queries.Increment(static_cast<double>(queried));
  impl_->prefix_hits.Increment(static_cast<double>(hit));
}
void Metrics::CountRequest(std::string_view mode, std::string_view sink, std::string_view calibration) {
  std::string key(mode);
  key.append("/").append(sink).append("/").append(calibration);
  Counter* c;
  {
    std::lock_guard<std::mutex> lock(impl_->requests_mu);
    Counter*& slot = impl_->request_series[key];
    if (slot == nullptr) {
      slot = &impl_->requests.Add(
          {{"mode", std::string(mode)}, {"sink", std::string(sink)}, {"calibration", std::string(calibration)}});
    }
    c = slot;
  }
  c->Increment();
}
void Metrics::AddAttentionPages(int64_t read, int64_t visible) {
  impl_->pages_read.Increment(static_cast<double>(read));
  impl_->pages_visible.Increment(static_cast<double>(visible));
}
void Metrics::AddEvictedPages(int64_t n) { impl_->evicted.Increment(static_cast<double>(n)); }
void Metrics::AddEvictedHeadSlices(int64_t n) { impl_->evicted_slices.Increment(static_cast<double>(n)); }
std::shared_ptr<prometheus::Registry> Metrics::registry() const { return impl_->registry; }

MetricsExposer::MetricsExposer(std::unique_ptr<prometheus::Exposer> exposer, int port)
    : exposer_(std::move(exposer)), port_(port) {}
MetricsExposer::MetricsExposer(MetricsExposer&&) noexcept = default;
MetricsExposer& MetricsExposer::operator=(MetricsExposer&&) noexcept = default;
MetricsExposer::~MetricsExposer() = default;

absl::StatusOr<MetricsExposer> StartExposer(Metrics& metrics, const std::string& bind_address) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(bind_address, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", bind_address, ": ", e.what()));
  }
  exposer->RegisterCollectable(metrics.registry());
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError(absl::StrCat("metrics: no listening port on ", bind_address));
  return MetricsExposer(std::move(exposer), ports.front());
}

}  // namespace attnserve
