#include "server/serving_context.h"

#include <cstdio>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/metrics/metrics.h"

namespace attnserve {

std::string ServingContext::NewRequestId() {
  return absl::StrCat("req-", next_request_id.fetch_add(1, std::memory_order_relaxed));
}

void ServingContext::BeginBackgroundCall() {
  std::lock_guard<std::mutex> lock(background_mu_);
  ++background_calls_;
}

void ServingContext::EndBackgroundCall() {
  std::lock_guard<std::mutex> lock(background_mu_);
  if (--background_calls_ == 0) background_done_.notify_all();
}

void ServingContext::WaitForBackgroundCalls() {
  std::unique_lock<std::mutex> lock(background_mu_);
  background_done_.wait(lock, [&] { return background_calls_ == 0; });
}

void ServingContext::RecordFinished(const RequestRecord& r) {
  // key=value pairs: greppable, and parseable by log pipelines. Client text
  // is escaped so a request cannot forge lines.
  std::string line = absl::StrFormat(
      "I %s request method=%s request_id=\"%s\" code=%s prompt_tokens=%d completion_tokens=%d "
      "finish_reason=%s ttft_s=%.4f e2e_s=%.4f",
      absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone()), r.method,
      absl::CEscape(r.request_id), absl::StatusCodeToString(r.code), r.prompt_tokens, r.completion_tokens,
      r.finish_reason.empty() ? "none" : r.finish_reason, r.ttft_seconds, r.e2e_seconds);
  if (r.code != absl::StatusCode::kOk) absl::StrAppend(&line, " error=\"", absl::CEscape(r.error), "\"");
  line += '\n';
  if (metrics != nullptr && r.code != absl::StatusCode::kOk) metrics->CountError(r.code);
  // One write per line keeps concurrent requests' lines whole.
  std::fputs(line.c_str(), stderr);
}

}  // namespace attnserve
