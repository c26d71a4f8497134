// Turns the bytes of successive tokens into text deltas that never split a
// UTF-8 character: a token may end in the middle of a multi-byte character
// (byte-level BPE), and the client must not see half of it.
#pragma once

#include <string>
#include <string_view>

namespace attnserve {

class TextStream {
 public:
  // Appends bytes; returns the text that is now complete.
  std::string Push(std::string_view bytes);
  // Returns whatever is held back (an unfinished character at the end).
  std::string Flush();

 private:
  std::string pending_;
};

// Length of the longest prefix of `bytes` that does not end inside a UTF-8
// character that more bytes could still complete. Invalid bytes count as
// complete (they will never become valid).
size_t CompleteUtf8Prefix(std::string_view bytes);

}  // namespace attnserve
