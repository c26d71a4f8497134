#include "engine/sampling/stop_checker.h"

#include <algorithm>

#include "engine/model/text_stream.h"

namespace attnserve {

StopChecker::StopChecker(std::span<const std::string> stop, int32_t min_tokens) : min_tokens_(min_tokens) {
  for (const std::string& s : stop) {
    if (s.empty()) continue;
    Pattern p{s, std::vector<int32_t>(s.size(), 0)};
    for (size_t i = 1, k = 0; i < s.size(); ++i) {
      while (k > 0 && s[i] != s[k]) k = p.fallback[k - 1];
      if (s[i] == s[k]) ++k;
      p.fallback[i] = static_cast<int32_t>(k);
    }
    patterns_.push_back(std::move(p));
  }
}

bool StopChecker::Advance(Pattern& p, char c) {
  int32_t m = p.matched;
  while (m > 0 && p.text[m] != c) m = p.fallback[m - 1];
  if (p.text[m] == c) ++m;
  const bool complete = m == static_cast<int32_t>(p.text.size());
  // After a whole match, go on from its longest border (overlapping matches).
  p.matched = complete ? p.fallback[m - 1] : m;
  return complete;
}

StopChecker::Result StopChecker::Push(std::string_view token_bytes) {
  Result result;
  if (stopped_) {
    result.stopped = true;
    return result;
  }
  ++tokens_;
  const bool can_stop = tokens_ >= min_tokens_;
  const size_t old_size = pending_.size();
  pending_.append(token_bytes);
  // Every partial match lies inside pending_ (it is held back below), so a
  // match's start is an index into it. The first byte that completes a stop
  // string ends the text, and the longest string completing there wins: the
  // result does not depend on how the bytes were split into tokens.
  size_t stop_at = std::string::npos;
  for (size_t i = old_size; i < pending_.size() && stop_at == std::string::npos; ++i) {
    for (Pattern& p : patterns_) {
      if (Advance(p, pending_[i]) && can_stop) stop_at = std::min(stop_at, i + 1 - p.text.size());
    }
  }
  if (stop_at != std::string::npos) {
    stopped_ = true;
    result.stopped = true;
    result.delta = pending_.substr(0, stop_at);
    pending_.clear();
    return result;
  }
  size_t held = 0;
  for (const Pattern& p : patterns_) held = std::max(held, static_cast<size_t>(p.matched));
  const size_t emit = CompleteUtf8Prefix(std::string_view(pending_).substr(0, pending_.size() - held));
  result.delta = pending_.substr(0, emit);
  pending_.erase(0, emit);
  return result;
}

std::string StopChecker::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace attnserve
