// Memory sizes on the command line: "256MiB", "1.5GiB", "512MB", "1048576".
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnserve {

// KiB/MiB/GiB/TiB and K/M/G/T are powers of 1024, KB/MB/GB/TB powers of
// 1000, B or no unit bytes; units are case-insensitive. INVALID_ARGUMENT for
// anything else, negative sizes, or sizes past 2^62.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

// An absl flag type holding a parsed size.
struct ByteSize {
  int64_t bytes = 0;
};
bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error);
std::string AbslUnparseFlag(ByteSize size);

}  // namespace attnserve
