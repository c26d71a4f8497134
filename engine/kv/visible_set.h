// The visible-set rule of a plan (DESIGN.md §4, sink and mode): which keys a
// query sees, and what that means for pages. Everything here is arithmetic
// on positions; nothing looks at keys.
#pragma once

#include <cstdint>

namespace attnserve {

// Pages [begin, end) of a sequence's page table.
struct PageRange {
  int32_t begin = 0;
  int32_t end = 0;
  bool empty() const { return begin >= end; }
};

// Query i sees key j <= i when j < sink_tokens or j > i - window_tokens
// (SequenceAttentionParams' rule); window_tokens == 0 keeps every key.
struct VisibleSet {
  int32_t sink_tokens = 0;
  int32_t window_tokens = 0;

  bool keeps_everything() const { return window_tokens == 0; }

  // Pages whose keys are all invisible to a query at next_query_pos and so,
  // the window only moving forward, to every later query: their keys lie in
  // [sink_tokens, next_query_pos - window_tokens]. Empty when every key stays.
  PageRange EvictablePages(int32_t next_query_pos, int32_t page_size) const;

  // Pages holding a key that some query in [first_query, last_query] sees:
  // the pages the attention kernel reads for them (it skips the band that
  // the window hides from the first query).
  int32_t PagesRead(int32_t first_query, int32_t last_query, int32_t page_size) const;

  // The most pages a sequence of num_tokens tokens holds at once when it
  // advances by at most `chunk` tokens a step and gives back EvictablePages
  // after each: the sinks' pages, and the window and the chunk's over their
  // page boundaries. All of its pages when every key stays.
  int64_t PeakPages(int64_t num_tokens, int32_t chunk, int32_t page_size) const;
};

}  // namespace attnserve
