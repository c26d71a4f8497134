#include "engine/model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <new>
#include <numeric>
#include <utility>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace attnserve {
namespace {

// GGUF is little-endian and scalars are copied as-is.
static_assert(std::endian::native == std::endian::little);

enum class ValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

constexpr uint32_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;
// A mapping starts on a page; an owned copy starts on a page too, so a tensor's
// data pointer has the same alignment either way.
constexpr size_t kBufferAlignment = 4096;

// Smallest encodings, used to reject counts the remaining bytes cannot hold
// before anything is reserved for them.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;               // empty key, type, one byte
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, one dim
// Even a checked count is reserved only up to this many elements: an in-memory
// element is larger than its smallest encoding, so a hostile count could still
// make us allocate several times the file size.
constexpr uint64_t kMaxReserve = 1 << 16;

constexpr const char* kTypeNames[] = {"UINT8",  "INT8",  "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
                                      "BOOL",   "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
// Encoded size of a fixed-size value; 0 for strings and arrays.
constexpr uint8_t kFixedSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

// A ValueType is only ever made from a checked id, so indexing is safe.
absl::string_view TypeName(ValueType t) { return kTypeNames[static_cast<uint32_t>(t)]; }
uint64_t FixedSize(ValueType t) { return kFixedSizes[static_cast<uint32_t>(t)]; }
bool IsFloat(ValueType t) { return t == ValueType::kFloat32 || t == ValueType::kFloat64; }
bool IsInteger(ValueType t) { return FixedSize(t) != 0 && t != ValueType::kBool && !IsFloat(t); }
bool IsString(ValueType t) { return t == ValueType::kString; }
bool IsBool(ValueType t) { return t == ValueType::kBool; }

// This absl is built with its own string_view type, which StrCat requires.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Integers and bools are stored as int64 (a UINT64 keeps its bits and is
// range-checked when read), floats as double. Arrays hold one vector of the
// matching kind; nested arrays hold Values.
struct Value {
  ValueType type = ValueType::kUint8;
  ValueType elem_type = ValueType::kUint8;  // arrays only
  std::variant<int64_t, double, std::string, std::vector<int64_t>, std::vector<double>,
               std::vector<std::string>, std::vector<Value>>
      data;
};

// Bounds-checked little-endian cursor; scalars are memcpy'd since the file
// gives no alignment guarantee for them.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  template <typename T>
  absl::Status Read(T* out, const char* what) {
    if (remaining() < sizeof(T)) return Truncated(what, sizeof(T));
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string* out, const char* what) {
    uint64_t len = 0;
    ATTN_RETURN_IF_ERROR(Read(&len, what));
    if (len > remaining()) {
      return absl::InvalidArgumentError(absl::StrCat(what, " length ", len, " at offset ", pos_ - 8,
                                                     " exceeds the remaining ", remaining(), " bytes"));
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

 private:
  absl::Status Truncated(const char* what, size_t need) const {
    return absl::InvalidArgumentError(absl::StrCat("truncated reading ", what, " at offset ", pos_, ": need ",
                                                   need, " bytes, ", remaining(), " left"));
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

absl::Status WithContext(const absl::Status& s, absl::string_view context) {
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

template <typename T>
absl::Status ReadAs(Reader& r, int64_t* out) {
  T v{};
  ATTN_RETURN_IF_ERROR(r.Read(&v, "value"));
  *out = static_cast<int64_t>(v);
  return absl::OkStatus();
}

absl::Status ReadInteger(Reader& r, ValueType t, int64_t* out) {
  switch (t) {
    case ValueType::kUint8: case ValueType::kBool: return ReadAs<uint8_t>(r, out);
    case ValueType::kInt8: return ReadAs<int8_t>(r, out);
    case ValueType::kUint16: return ReadAs<uint16_t>(r, out);
    case ValueType::kInt16: return ReadAs<int16_t>(r, out);
    case ValueType::kUint32: return ReadAs<uint32_t>(r, out);
    case ValueType::kInt32: return ReadAs<int32_t>(r, out);
    case ValueType::kUint64: return ReadAs<uint64_t>(r, out);
    default: return ReadAs<int64_t>(r, out);
  }
}

absl::Status ReadFloat(Reader& r, ValueType t, double* out) {
  if (t == ValueType::kFloat32) {
    float f = 0;
    ATTN_RETURN_IF_ERROR(r.Read(&f, "value"));
    *out = f;
    return absl::OkStatus();
  }
  return r.Read(out, "value");
}

absl::Status ReadValueType(Reader& r, ValueType* out, const char* what) {
  uint32_t raw = 0;
  ATTN_RETURN_IF_ERROR(r.Read(&raw, what));
  if (raw > static_cast<uint32_t>(ValueType::kFloat64)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown value type ", raw));
  }
  *out = static_cast<ValueType>(raw);
  return absl::OkStatus();
}

// Reads `count` elements with a loop specialised per kind, so a 50k-entry
// vocabulary costs one pass and one allocation per string.
template <typename T, typename ReadOne>
absl::Status ReadElements(uint64_t count, Value* out, ReadOne read_one) {
  std::vector<T> elems;
  elems.reserve(std::min(count, kMaxReserve));
  for (uint64_t i = 0; i < count; ++i) {
    T v{};
    if (absl::Status s = read_one(&v); !s.ok()) return WithContext(s, absl::StrCat("element ", i));
    elems.push_back(std::move(v));
  }
  out->data = std::move(elems);
  return absl::OkStatus();
}

absl::Status ReadValue(Reader& r, ValueType type, int depth, Value* out);

absl::Status ReadArray(Reader& r, int depth, Value* out) {
  if (depth >= kMaxArrayDepth) {
    return absl::InvalidArgumentError(absl::StrCat("arrays nested deeper than ", kMaxArrayDepth));
  }
  ValueType elem = ValueType::kUint8;
  ATTN_RETURN_IF_ERROR(ReadValueType(r, &elem, "array element type"));
  uint64_t count = 0;
  ATTN_RETURN_IF_ERROR(r.Read(&count, "array count"));
  // Strings need at least their length, arrays their element type and count.
  const uint64_t min_elem = elem == ValueType::kString ? 8 : elem == ValueType::kArray ? 12 : FixedSize(elem);
  if (count > r.remaining() / min_elem) {
    return absl::InvalidArgumentError(absl::StrCat("array of ", count, " ", TypeName(elem),
                                                   " elements exceeds the remaining ", r.remaining(), " bytes"));
  }
  out->elem_type = elem;
  if (IsInteger(elem) || elem == ValueType::kBool) {
    return ReadElements<int64_t>(count, out, [&](int64_t* v) { return ReadInteger(r, elem, v); });
  }
  if (IsFloat(elem)) {
    return ReadElements<double>(count, out, [&](double* v) { return ReadFloat(r, elem, v); });
  }
  if (elem == ValueType::kString) {
    return ReadElements<std::string>(count, out, [&](std::string* v) { return r.ReadString(v, "string"); });
  }
  return ReadElements<Value>(count, out, [&](Value* v) { return ReadValue(r, ValueType::kArray, depth + 1, v); });
}

absl::Status ReadValue(Reader& r, ValueType type, int depth, Value* out) {
  out->type = type;
  if (type == ValueType::kArray) return ReadArray(r, depth, out);
  if (type == ValueType::kString) {
    std::string str;
    ATTN_RETURN_IF_ERROR(r.ReadString(&str, "string"));
    out->data = std::move(str);
    return absl::OkStatus();
  }
  if (IsFloat(type)) {
    double d = 0;
    ATTN_RETURN_IF_ERROR(ReadFloat(r, type, &d));
    out->data = d;
    return absl::OkStatus();
  }
  int64_t i = 0;
  ATTN_RETURN_IF_ERROR(ReadInteger(r, type, &i));
  out->data = i;
  return absl::OkStatus();
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

struct GgufFile::Impl {
  ~Impl() {
    if (mapping != nullptr) munmap(mapping, size);
    if (owned != nullptr) ::operator delete[](owned, std::align_val_t{kBufferAlignment});
  }

  absl::Status Parse();
  absl::Status ParseMetadata(Reader& r, uint64_t kv_count);
  absl::Status ParseTensorInfo(Reader& r, uint64_t index, uint32_t alignment, uint64_t* offset);
  absl::Status PlaceTensors(uint64_t data_start, const std::vector<uint64_t>& offsets);
  // The value of `key` if it is a scalar (or, with `array`, an array whose
  // elements are) of a type accepted by `type_ok`.
  absl::StatusOr<const Value*> Find(std::string_view key, bool array, bool (*type_ok)(ValueType),
                                    std::string_view expected) const;

  void* mapping = nullptr;
  uint8_t* owned = nullptr;
  const uint8_t* base = nullptr;
  size_t size = 0;

  uint32_t version = 0;
  std::map<std::string, Value, std::less<>> metadata;
  std::vector<GgufTensor> tensors;
  std::map<std::string, size_t, std::less<>> tensor_index;
};

absl::Status GgufFile::Impl::Parse() {
  Reader r(base, size);
  char magic[4] = {};
  ATTN_RETURN_IF_ERROR(r.Read(&magic, "magic"));
  if (std::memcmp(magic, "GGUF", 4) != 0) return absl::InvalidArgumentError("bad magic (not a GGUF file)");
  ATTN_RETURN_IF_ERROR(r.Read(&version, "version"));
  if (version != 2 && version != 3) {
    return absl::UnimplementedError(absl::StrCat("unsupported version ", version, " (supported: 2, 3)"));
  }
  uint64_t tensor_count = 0, kv_count = 0;
  ATTN_RETURN_IF_ERROR(r.Read(&tensor_count, "tensor count"));
  ATTN_RETURN_IF_ERROR(r.Read(&kv_count, "metadata count"));
  if (kv_count > r.remaining() / kMinKvBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata count ", kv_count, " exceeds what the remaining ", r.remaining(), " bytes can hold"));
  }
  if (tensor_count > (r.remaining() - kv_count * kMinKvBytes) / kMinTensorInfoBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor count ", tensor_count, " exceeds what the remaining ", r.remaining(), " bytes can hold"));
  }
  ATTN_RETURN_IF_ERROR(ParseMetadata(r, kv_count));

  uint32_t alignment = kDefaultAlignment;
  if (auto it = metadata.find("general.alignment"); it != metadata.end()) {
    if (it->second.type != ValueType::kUint32) {
      return absl::InvalidArgumentError(
          absl::StrCat("general.alignment has type ", TypeName(it->second.type), ", expected UINT32"));
    }
    const int64_t a = std::get<int64_t>(it->second.data);
    if (!IsPowerOfTwo(static_cast<uint64_t>(a))) {
      return absl::InvalidArgumentError(absl::StrCat("general.alignment ", a, " is not a power of two"));
    }
    alignment = static_cast<uint32_t>(a);
  }

  tensors.reserve(std::min(tensor_count, kMaxReserve));
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    uint64_t offset = 0;
    ATTN_RETURN_IF_ERROR(ParseTensorInfo(r, i, alignment, &offset));
    offsets.push_back(offset);
  }
  // pos <= size and alignment < 2^32, so this cannot overflow.
  const uint64_t data_start = (r.pos() + alignment - 1) / alignment * alignment;
  return PlaceTensors(data_start, offsets);
}

absl::Status GgufFile::Impl::ParseMetadata(Reader& r, uint64_t kv_count) {
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key;
    if (absl::Status s = r.ReadString(&key, "key"); !s.ok()) {
      return WithContext(s, absl::StrCat("metadata entry ", i));
    }
    auto [it, inserted] = metadata.try_emplace(std::move(key));
    if (!inserted) return absl::InvalidArgumentError(absl::StrCat("duplicate key '", it->first, "'"));
    ValueType type = ValueType::kUint8;
    absl::Status s = ReadValueType(r, &type, "value type");
    if (s.ok()) s = ReadValue(r, type, 0, &it->second);
    if (!s.ok()) return WithContext(s, absl::StrCat("key '", it->first, "'"));
  }
  return absl::OkStatus();
}

absl::Status GgufFile::Impl::ParseTensorInfo(Reader& r, uint64_t index, uint32_t alignment, uint64_t* offset) {
  GgufTensor t;
  if (absl::Status s = r.ReadString(&t.name, "name"); !s.ok()) {
    return WithContext(s, absl::StrCat("tensor info ", index));
  }
  const auto error = [&t](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': ", parts...));
  };
  const auto context = [&t](const absl::Status& s) { return WithContext(s, absl::StrCat("tensor '", t.name, "'")); };
  if (tensor_index.count(t.name) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
  }

  uint32_t n_dims = 0;
  if (absl::Status s = r.Read(&n_dims, "n_dims"); !s.ok()) return context(s);
  if (n_dims == 0 || n_dims > kMaxDims) return error("n_dims ", n_dims, " is not in [1, ", kMaxDims, "]");
  int64_t elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t dim = 0;
    if (absl::Status s = r.Read(&dim, "dimension"); !s.ok()) return context(s);
    if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return error("dimension ", d, " = ", dim, " is out of range");
    }
    if (__builtin_mul_overflow(elements, static_cast<int64_t>(dim), &elements)) {
      return error("element count overflows");
    }
    t.dims.push_back(static_cast<int64_t>(dim));
  }
  t.num_elements = elements;

  uint32_t type_id = 0;
  if (absl::Status s = r.Read(&type_id, "type"); !s.ok()) return context(s);
  t.type = static_cast<GgmlType>(type_id);
  const std::optional<GgmlTypeTraits> traits = TypeTraits(t.type);
  if (!traits) {
    return absl::UnimplementedError(absl::StrCat("tensor '", t.name, "': unsupported type id ", type_id));
  }
  if (t.dims[0] % traits->block_size != 0) {
    return error("dimension 0 = ", t.dims[0], " is not a multiple of the ", Av(traits->name), " block size ",
                 traits->block_size);
  }
  if (__builtin_mul_overflow(static_cast<uint64_t>(elements / traits->block_size), traits->block_bytes, &t.nbytes)) {
    return error("byte size overflows");
  }

  if (absl::Status s = r.Read(offset, "offset"); !s.ok()) return context(s);
  if (*offset % alignment != 0) return error("offset ", *offset, " is not a multiple of the alignment ", alignment);
  tensor_index.emplace(t.name, tensors.size());
  tensors.push_back(std::move(t));
  return absl::OkStatus();
}

absl::Status GgufFile::Impl::PlaceTensors(uint64_t data_start, const std::vector<uint64_t>& offsets) {
  if (tensors.empty()) return absl::OkStatus();
  if (data_start > size) {
    return absl::InvalidArgumentError(
        absl::StrCat("data section starts at ", data_start, ", past the end of the ", size, "-byte file"));
  }
  const uint64_t data_size = size - data_start;
  for (size_t i = 0; i < tensors.size(); ++i) {
    GgufTensor& t = tensors[i];
    if (offsets[i] > data_size || t.nbytes > data_size - offsets[i]) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': data [", offsets[i], ", +", t.nbytes,
                                                     ") extends past the ", data_size, "-byte data section"));
    }
    t.data = base + data_start + offsets[i];
  }
  // Overlap means a corrupt file; checked in offset order so it stays O(n log n).
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return offsets[a] < offsets[b]; });
  for (size_t k = 1; k < order.size(); ++k) {
    const size_t prev = order[k - 1], cur = order[k];
    if (offsets[prev] + tensors[prev].nbytes > offsets[cur]) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors '", tensors[prev].name, "' and '", tensors[cur].name, "' overlap"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<const Value*> GgufFile::Impl::Find(std::string_view key, bool array, bool (*type_ok)(ValueType),
                                                  std::string_view expected) const {
  auto it = metadata.find(key);
  if (it == metadata.end()) return absl::NotFoundError(absl::StrCat("gguf: key '", Av(key), "' not found"));
  const Value& v = it->second;
  const bool is_array = v.type == ValueType::kArray;
  if (is_array != array || !type_ok(array ? v.elem_type : v.type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gguf: key '", Av(key), "' has type ", is_array ? absl::StrCat("ARRAY of ", TypeName(v.elem_type)) : std::string(TypeName(v.type)),
        ", expected ", array ? "ARRAY of " : "", Av(expected)));
  }
  return &v;
}

namespace {

absl::Status Uint64OutOfRange(std::string_view key, int64_t bits) {
  return absl::InvalidArgumentError(
      absl::StrCat("gguf: key '", Av(key), "' value ", static_cast<uint64_t>(bits), " does not fit in int64"));
}

}  // namespace

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::~GgufFile() = default;

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("gguf: cannot open ", path));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("gguf: cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("gguf: ", path, " is not a regular file"));
  }
  auto impl = std::make_unique<Impl>();
  impl->size = static_cast<size_t>(st.st_size);
  // mmap rejects a zero length; an empty file is then parsed as zero bytes.
  if (impl->size > 0) {
    void* m = mmap(nullptr, impl->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("gguf: cannot map ", path));
    }
    impl->mapping = m;
    impl->base = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  if (absl::Status s = impl->Parse(); !s.ok()) return WithContext(s, absl::StrCat("gguf: ", path));
  return std::unique_ptr<GgufFile>(new GgufFile(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(std::string_view bytes) {
  auto impl = std::make_unique<Impl>();
  if (!bytes.empty()) {
    impl->owned = static_cast<uint8_t*>(::operator new[](bytes.size(), std::align_val_t{kBufferAlignment}));
    std::memcpy(impl->owned, bytes.data(), bytes.size());
  }
  impl->base = impl->owned;
  impl->size = bytes.size();
  if (absl::Status s = impl->Parse(); !s.ok()) return WithContext(s, "gguf");
  return std::unique_ptr<GgufFile>(new GgufFile(std::move(impl)));
}

uint32_t GgufFile::version() const { return impl_->version; }

std::vector<std::string> GgufFile::Keys() const {
  std::vector<std::string> keys;
  keys.reserve(impl_->metadata.size());
  for (const auto& [key, value] : impl_->metadata) keys.push_back(key);
  return keys;
}

bool GgufFile::HasKey(std::string_view key) const { return impl_->metadata.find(key) != impl_->metadata.end(); }

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  ATTN_ASSIGN_OR_RETURN(const Value* v, impl_->Find(key, false, IsString, "STRING"));
  return std::get<std::string>(v->data);
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  ATTN_ASSIGN_OR_RETURN(const Value* v, impl_->Find(key, false, IsInteger, "an integer type"));
  const int64_t i = std::get<int64_t>(v->data);
  if (v->type == ValueType::kUint64 && i < 0) return Uint64OutOfRange(key, i);
  return i;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  ATTN_ASSIGN_OR_RETURN(const Value* v, impl_->Find(key, false, IsFloat, "FLOAT32 or FLOAT64"));
  return std::get<double>(v->data);
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  ATTN_ASSIGN_OR_RETURN(const Value* v, impl_->Find(key, false, IsBool, "BOOL"));
  return std::get<int64_t>(v->data) != 0;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  ATTN_ASSIGN_OR_RETURN(const Value* v, impl_->Find(key, true, IsString, "STRING"));
  return std::get<std::vector<std::string>>(v->data);
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  ATTN_ASSIGN_OR_RETURN(const Value* v, impl_->Find(key, true, IsInteger, "an integer type"));
  const auto& elems = std::get<std::vector<int64_t>>(v->data);
  if (v->elem_type == ValueType::kUint64) {
    for (int64_t e : elems) {
      if (e < 0) return Uint64OutOfRange(key, e);
    }
  }
  return elems;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  ATTN_ASSIGN_OR_RETURN(const Value* v, impl_->Find(key, true, IsFloat, "FLOAT32 or FLOAT64"));
  return std::get<std::vector<double>>(v->data);
}

const std::vector<GgufTensor>& GgufFile::tensors() const { return impl_->tensors; }

absl::StatusOr<const GgufTensor*> GgufFile::GetTensor(std::string_view name) const {
  auto it = impl_->tensor_index.find(name);
  if (it == impl_->tensor_index.end()) {
    return absl::NotFoundError(absl::StrCat("gguf: tensor '", Av(name), "' not found"));
  }
  return &impl_->tensors[it->second];
}

}  // namespace attnserve
