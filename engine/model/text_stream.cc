#include "engine/model/text_stream.h"

namespace attnserve {

size_t CompleteUtf8Prefix(std::string_view bytes) {
  // Only the last (up to 3) bytes can start an unfinished character.
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    const size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

std::string TextStream::Push(std::string_view bytes) {
  pending_.append(bytes);
  const size_t complete = CompleteUtf8Prefix(pending_);
  std::string out = pending_.substr(0, complete);
  pending_.erase(0, complete);
  return out;
}

std::string TextStream::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace attnserve
