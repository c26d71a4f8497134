// State shared by the RPC handlers of one server: the engine, the metrics,
// the drain flag, and the per-request log line.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "attnserve/v1/attention.pb.h"
#include "engine/core/engine.h"
#include "engine/policy/head_profile.h"

namespace attnserve {

class Metrics;

// What the log line and the error counter say about one finished request.
struct RequestRecord {
  absl::string_view method;  // "Generate", "Score"
  std::string request_id;
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string error;          // the status message when code is not OK
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;  // summed over the n completions
  std::string finish_reason;  // per completion, comma-separated
  double ttft_seconds = 0.0;
  double e2e_seconds = 0.0;
};

struct ServingContext {
  ServingContext(Engine& e, Metrics* m, v1::AttentionPolicy default_policy, HeadProfiles head_profiles)
      : engine(e),
        metrics(m),
        default_attention(std::move(default_policy)),
        profiles(std::move(head_profiles)),
        started(absl::Now()) {}

  // "req-<n>", unique within this process, for requests that bring none.
  std::string NewRequestId();
  // Logs one INFO line and counts request_errors_total{code} for failures.
  void RecordFinished(const RequestRecord& record);

  // Calls that run on threads of their own (Score) are counted so that the
  // server outlives them.
  void BeginBackgroundCall();
  void EndBackgroundCall();
  void WaitForBackgroundCalls();

  Engine& engine;
  Metrics* metrics;  // may be null
  // For requests that bring no policy; validated when the server started.
  const v1::AttentionPolicy default_attention;
  // What AttentionPolicy.profile may name (--profile-dir), by name.
  const HeadProfiles profiles;
  const absl::Time started;
  std::atomic<bool> draining{false};  // new Generate/Score calls get UNAVAILABLE
  std::atomic<uint64_t> next_request_id{1};

 private:
  std::mutex background_mu_;
  std::condition_variable background_done_;
  int background_calls_ = 0;
};

}  // namespace attnserve
