// GGUF images for tests: GgufBuilder lays out a file field by field and
// remembers where each count, length, type and offset went, so tests can
// corrupt them (gguf_test) or write whole models (synthetic_model.h).
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "kernels/common/ggml_types.h"

namespace attnserve::testing_gguf {

// GGUF metadata value type ids.
enum : uint32_t { kU8, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kStr, kArr, kU64, kI64, kF64 };

template <typename T>
std::string Bytes(T v) {
  std::string s(sizeof(T), '\0');
  std::memcpy(s.data(), &v, sizeof(T));
  return s;
}

inline std::string Str(const std::string& s) { return Bytes<uint64_t>(s.size()) + s; }

template <typename T>
std::string ArrayBytes(uint32_t elem_type, const std::vector<T>& elems) {
  std::string out = Bytes(elem_type) + Bytes<uint64_t>(elems.size());
  for (const T& e : elems) out += Bytes(e);
  return out;
}

inline std::string StringArrayBytes(const std::vector<std::string>& elems) {
  std::string out = Bytes<uint32_t>(kStr) + Bytes<uint64_t>(elems.size());
  for (const std::string& e : elems) out += Str(e);
  return out;
}

// An array holding `depth` levels of arrays, the innermost empty.
inline std::string NestedArrayBytes(int depth) {
  std::string out;
  for (int i = 1; i < depth; ++i) out += Bytes<uint32_t>(kArr) + Bytes<uint64_t>(1);
  return out + Bytes<uint32_t>(kU8) + Bytes<uint64_t>(0);
}

// Builds GGUF images and remembers where every count, length, type and
// offset field landed, so tests can overwrite them with hostile values.
class GgufBuilder {
 public:
  struct Field {
    size_t pos;
    int width;  // bytes: 4 or 8
  };

  uint32_t version = 3;
  uint32_t alignment = 32;  // layout only; add general.alignment to declare it

  void Kv(const std::string& key, uint32_t type, std::string value) {
    kvs_.push_back({key, type, std::move(value)});
  }
  template <typename T>
  void Scalar(const std::string& key, uint32_t type, T v) { Kv(key, type, Bytes(v)); }
  void String(const std::string& key, const std::string& v) { Kv(key, kStr, Str(v)); }

  // A tensor of patterned bytes.
  void Tensor(const std::string& name, std::vector<uint64_t> dims, GgmlType type) {
    const GgmlTypeTraits traits = *TypeTraits(type);
    uint64_t elements = 1;
    for (uint64_t d : dims) elements *= d;
    std::string data(elements / traits.block_size * traits.block_bytes, '\0');
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + name.size());
    tensors_.push_back({name, std::move(dims), type, std::move(data)});
  }
  // An F32 tensor of these values (dims innermost first, as GGUF lists them).
  void F32Tensor(const std::string& name, std::vector<uint64_t> dims, const std::vector<float>& values) {
    std::string data(values.size() * sizeof(float), '\0');
    std::memcpy(data.data(), values.data(), data.size());
    tensors_.push_back({name, std::move(dims), GgmlType::kF32, std::move(data)});
  }

  std::string Build() {
    fields.clear();
    std::string out = "GGUF";
    Mark("version", out, 4);
    out += Bytes(version);
    Mark("tensor_count", out, 8);
    out += Bytes<uint64_t>(tensors_.size());
    Mark("kv_count", out, 8);
    out += Bytes<uint64_t>(kvs_.size());
    for (const KvSpec& kv : kvs_) {
      Mark("keylen:" + kv.key, out, 8);
      out += Str(kv.key);
      Mark("type:" + kv.key, out, 4);
      out += Bytes(kv.type);
      // The first field of a value: a string's length or an array's element
      // type, followed by its count.
      if (kv.type == kStr) Mark("value:" + kv.key, out, 8);
      if (kv.type == kArr) {
        Mark("elemtype:" + kv.key, out, 4);
        fields["count:" + kv.key] = {out.size() + 4, 8};
      }
      out += kv.value;
    }
    uint64_t offset = 0;
    for (const TensorSpec& t : tensors_) {
      Mark("namelen:" + t.name, out, 8);
      out += Str(t.name);
      Mark("ndims:" + t.name, out, 4);
      out += Bytes<uint32_t>(t.dims.size());
      for (size_t d = 0; d < t.dims.size(); ++d) {
        Mark("dim" + std::to_string(d) + ":" + t.name, out, 8);
        out += Bytes(t.dims[d]);
      }
      Mark("ttype:" + t.name, out, 4);
      out += Bytes(static_cast<uint32_t>(t.type));
      offset = AlignUp(offset);
      Mark("offset:" + t.name, out, 8);
      out += Bytes(offset);
      offsets[t.name] = offset;
      offset += t.data.size();
    }
    out.resize(AlignUp(out.size()), '\0');
    const size_t data_start = out.size();
    for (const TensorSpec& t : tensors_) {
      out.resize(data_start + offsets[t.name], '\0');
      out += t.data;
      data[t.name] = t.data;
    }
    return out;
  }

  std::map<std::string, Field> fields;       // of the last Build()
  std::map<std::string, uint64_t> offsets;   // tensor name -> offset in the data section
  std::map<std::string, std::string> data;   // tensor name -> its bytes

 private:
  struct KvSpec {
    std::string key;
    uint32_t type;
    std::string value;
  };
  struct TensorSpec {
    std::string name;
    std::vector<uint64_t> dims;
    GgmlType type;
    std::string data;
  };

  uint64_t AlignUp(uint64_t v) const { return (v + alignment - 1) / alignment * alignment; }
  void Mark(const std::string& name, const std::string& out, int width) { fields[name] = {out.size(), width}; }

  std::vector<KvSpec> kvs_;
  std::vector<TensorSpec> tensors_;
};

}  // namespace attnserve::testing_gguf
