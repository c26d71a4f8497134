#include "engine/core/output_stream.h"

#include <algorithm>

namespace attnserve {
namespace {

void MergeInto(GenerationDelta& into, GenerationDelta&& from) {
  into.token_ids.insert(into.token_ids.end(), from.token_ids.begin(), from.token_ids.end());
  into.text += from.text;
  for (TokenLogprob& l : from.logprobs) into.logprobs.push_back(std::move(l));
  if (from.finish_reason != FinishReason::kNone || !from.error.ok()) {
    into.finish_reason = from.finish_reason;
    into.prompt_tokens = from.prompt_tokens;
    into.completion_tokens = from.completion_tokens;
    into.cached_prompt_tokens = from.cached_prompt_tokens;
    into.queue_seconds = from.queue_seconds;
    into.time_to_first_token_seconds = from.time_to_first_token_seconds;
    into.error = from.error;
  }
}

}  // namespace

void OutputStream::Push(GenerationDelta delta) {
  bool notify = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (delta.finish_reason != FinishReason::kNone || !delta.error.ok()) ++finished_;
    auto it = std::find_if(pending_.begin(), pending_.end(),
                           [&](const GenerationDelta& d) { return d.index == delta.index; });
    if (it != pending_.end()) {
      MergeInto(*it, std::move(delta));
    } else {
      pending_.push_back(std::move(delta));
    }
    notify = reader_waiting_;
    reader_waiting_ = false;
  }
  if (notify && on_ready_) on_ready_();
}

std::vector<GenerationDelta> OutputStream::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<GenerationDelta> out;
  out.swap(pending_);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  reader_waiting_ = out.empty();
  return out;
}

bool OutputStream::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_ >= completions_;
}

}  // namespace attnserve
