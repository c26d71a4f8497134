// Stop strings over a stream of token bytes, and the text deltas that may be
// shown now. A stop string may span tokens and may start or end inside a
// multi-byte character, so bytes that could still begin a stop string are
// held back, and a delta never ends inside a UTF-8 character.
//
// Engine contract:
// - Each generated token's bytes go through Push, except for a token that
//   ends generation by id (EOG, or one of stop_token_ids): its id is returned
//   but its text is not, then Flush() ends the text. vLLM drops the text of
//   special stop tokens (what stop_token_ids name in practice, e.g.
//   <|im_end|>) and keeps that of plain ones; we drop it always, for one rule.
// - When Push reports `stopped`, the delta is the text before the stop string
//   (the stop string is not returned) and generation ends with STOP. The
//   text ends at the first byte that completes any stop string (the longest
//   one completing there is removed), so the result does not depend on how
//   the bytes were split into tokens.
// - At any other end (LENGTH, abort), append Flush().
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace attnserve {

class StopChecker {
 public:
  struct Result {
    std::string delta;     // text that can be emitted now
    bool stopped = false;  // a stop string matched: generation ends
  };

  // stop: the request's stop strings (validated non-empty). As in vLLM, a stop
  // string that completes while fewer than min_tokens tokens have been pushed
  // is ignored (it is returned as text).
  explicit StopChecker(std::span<const std::string> stop, int32_t min_tokens = 0);

  // One token's bytes. After `stopped`, further pushes return nothing.
  Result Push(std::string_view token_bytes);
  // The text held back, e.g. an unfinished character or a partial match.
  std::string Flush();

 private:
  // A stop string as a Knuth-Morris-Pratt matcher over the byte stream.
  struct Pattern {
    std::string text;
    std::vector<int32_t> fallback;  // [i]: longest proper border of text[0..i]
    int32_t matched = 0;            // bytes of text matching the stream's end
  };
  // Feeds one byte; true when the whole pattern just matched.
  static bool Advance(Pattern& p, char c);

  std::vector<Pattern> patterns_;
  int32_t min_tokens_;
  int32_t tokens_ = 0;
  bool stopped_ = false;
  std::string pending_;  // bytes not yet emitted
};

}  // namespace attnserve
