#include "server/byte_size.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attnserve {
namespace {

struct Unit {
  const char* name;  // lower case
  double factor;
};

constexpr Unit kUnits[] = {
    {"", 1.0},          {"b", 1.0},
    {"k", 0x1p10},      {"kib", 0x1p10},   {"kb", 1e3},
    {"m", 0x1p20},      {"mib", 0x1p20},   {"mb", 1e6},
    {"g", 0x1p30},      {"gib", 0x1p30},   {"gb", 1e9},
    {"t", 0x1p40},      {"tib", 0x1p40},   {"tb", 1e12},
};

}  // namespace

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  size_t digits = 0;
  while (digits < trimmed.size() && (absl::ascii_isdigit(trimmed[digits]) || trimmed[digits] == '.')) ++digits;
  double number = 0.0;
  if (digits == 0 || !absl::SimpleAtod(trimmed.substr(0, digits), &number)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a size such as 256MiB"));
  }
  const std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(trimmed.substr(digits)));
  for (const Unit& u : kUnits) {
    if (unit != u.name) continue;
    const double bytes = std::round(number * u.factor);
    if (!(bytes <= 0x1p62)) return absl::InvalidArgumentError(absl::StrCat("'", text, "' is too large"));
    return static_cast<int64_t>(bytes);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", text, "' has an unknown unit '", unit, "' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"));
}

bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error) {
  absl::StatusOr<int64_t> bytes = ParseByteSize(text);
  if (!bytes.ok()) {
    *error = std::string(bytes.status().message());
    return false;
  }
  size->bytes = *bytes;
  return true;
}

std::string AbslUnparseFlag(ByteSize size) {
  if (size.bytes > 0 && size.bytes % (1 << 20) == 0) return absl::StrCat(size.bytes >> 20, "MiB");
  return absl::StrCat(size.bytes);
}

}  // namespace attnserve
