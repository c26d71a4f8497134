#include "engine/kv/visible_set.h"

#include <algorithm>

namespace attnserve {

PageRange VisibleSet::EvictablePages(int32_t next_query_pos, int32_t page_size) const {
  if (keeps_everything()) return {};
  // Hidden keys: [sink_tokens, hidden_end). Only whole pages inside go.
  const int32_t hidden_end = next_query_pos - window_tokens + 1;
  const int32_t begin = (sink_tokens + page_size - 1) / page_size;
  const int32_t end = std::max(0, hidden_end) / page_size;
  return {begin, std::max(begin, end)};
}

int32_t VisibleSet::PagesRead(int32_t first_query, int32_t last_query, int32_t page_size) const {
  const int32_t all = last_query / page_size + 1;
  // The kernel's KeysToRead: keys [0, last_query] minus [sink_tokens, band_end).
  const int32_t band_end = std::min(last_query + 1, first_query - window_tokens + 1);
  if (keeps_everything() || sink_tokens >= band_end) return all;
  const int32_t sink_pages = (sink_tokens + page_size - 1) / page_size;
  const int32_t window_pages = all - band_end / page_size;
  // The last sink page may also hold the first window key.
  const bool shared = sink_tokens > 0 && (sink_tokens - 1) / page_size == band_end / page_size;
  return sink_pages + window_pages - (shared ? 1 : 0);
}

int64_t VisibleSet::PeakPages(int64_t num_tokens, int32_t chunk, int32_t page_size) const {
  const int64_t all = (num_tokens + page_size - 1) / page_size;
  if (keeps_everything()) return all;
  // Queries [p, p + chunk) run with the keys [sink_tokens, p - window_tokens]
  // given back: held are the sink pages and the pages of keys
  // [p - window_tokens + 1, p + chunk), over at most two partial pages.
  const int64_t sink_pages = (static_cast<int64_t>(sink_tokens) + page_size - 1) / page_size;
  const int64_t recent_pages = (static_cast<int64_t>(window_tokens) + chunk + page_size - 1) / page_size + 1;
  return std::min(all, sink_pages + recent_pages);
}

}  // namespace attnserve
