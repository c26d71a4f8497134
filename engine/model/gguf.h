// GGUF file reader: header, metadata, tensor infos, alignment, mmap.
//
// Everything read from the file is validated before use: counts, string
// lengths, array lengths and tensor extents are checked against the file size
// before any allocation, so a truncated, corrupt or hostile file yields an
// error naming the problem, never a crash or a huge allocation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/common/ggml_types.h"

namespace attnserve {

struct GgufTensor {
  std::string name;
  std::vector<int64_t> dims;  // dims[0] is the innermost (contiguous) dimension
  GgmlType type = GgmlType::kF32;
  const uint8_t* data = nullptr;  // inside the mapping, aligned
  uint64_t nbytes = 0;
  int64_t num_elements = 0;
};

class GgufFile {
 public:
  // Maps the file read-only and parses it.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an in-memory image (copied); for tests and fuzzing.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(std::string_view bytes);
  ~GgufFile();

  uint32_t version() const;
  std::vector<std::string> Keys() const;
  bool HasKey(std::string_view key) const;
  // Typed getters; NOT_FOUND for a missing key, INVALID_ARGUMENT naming the
  // key for a value of another type. GetInt accepts every integer type,
  // GetFloat every float type.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const;
  // NOT_FOUND naming the tensor when absent.
  absl::StatusOr<const GgufTensor*> GetTensor(std::string_view name) const;

 private:
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace attnserve
