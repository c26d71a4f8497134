#include "engine/model/gguf.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "tests/unit/gguf_builder.h"
#include "gtest/gtest.h"

namespace attnserve {
namespace {

using namespace testing_gguf;

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Patch(std::string image, const GgufBuilder::Field& f, uint64_t value) {
  if (f.width == 4) {
    const uint32_t v = static_cast<uint32_t>(value);
    std::memcpy(image.data() + f.pos, &v, 4);
  } else {
    std::memcpy(image.data() + f.pos, &value, 8);
  }
  return image;
}

// A builder with every metadata type and three tensors of different types.
GgufBuilder MakeValid() {
  GgufBuilder b;
  b.String("general.architecture", "llama");
  b.Scalar<uint8_t>("t.u8", kU8, 200);
  b.Scalar<int8_t>("t.i8", kI8, -100);
  b.Scalar<uint16_t>("t.u16", kU16, 60000);
  b.Scalar<int16_t>("t.i16", kI16, -30000);
  b.Scalar<uint32_t>("llama.block_count", kU32, 30);
  b.Scalar<int32_t>("t.i32", kI32, -7);
  b.Scalar<uint64_t>("t.u64", kU64, 1ull << 40);
  b.Scalar<uint64_t>("t.u64_huge", kU64, ~0ull);
  b.Scalar<int64_t>("t.i64", kI64, -(1ll << 50));
  b.Scalar<float>("t.f32", kF32, 1.5f);
  b.Scalar<double>("t.f64", kF64, -2.25);
  b.Scalar<uint8_t>("t.bool", kBool, 1);
  b.Kv("tokenizer.ggml.tokens", kArr, StringArrayBytes({"<s>", "", "hello", std::string("a\0b", 3)}));
  b.Kv("t.i32s", kArr, ArrayBytes<int32_t>(kI32, {1, -2, 3}));
  b.Kv("t.u64s", kArr, ArrayBytes<uint64_t>(kU64, {5, ~0ull}));
  b.Kv("t.f32s", kArr, ArrayBytes<float>(kF32, {0.5f, -1.0f}));
  b.Kv("t.nested", kArr, NestedArrayBytes(3));
  b.Tensor("a.f32", {4, 3}, GgmlType::kF32);
  b.Tensor("b.f16", {64, 2}, GgmlType::kF16);
  b.Tensor("c.q4_0", {64, 3, 1}, GgmlType::kQ4_0);
  return b;
}

// Reads every value and every tensor byte, so ASan sees any bad extent.
void TouchEverything(const GgufFile& f) {
  for (const std::string& key : f.Keys()) {
    (void)f.GetString(key), (void)f.GetInt(key), (void)f.GetFloat(key), (void)f.GetBool(key);
    (void)f.GetStringArray(key), (void)f.GetIntArray(key), (void)f.GetFloatArray(key);
  }
  volatile uint8_t sink = 0;
  for (const GgufTensor& t : f.tensors()) {
    for (uint64_t i = 0; i < t.nbytes; ++i) sink = sink ^ t.data[i];
  }
}

// Either parses or fails with a "gguf: " error, and never crashes.
void ExpectCleanResult(const std::string& image, const std::string& what) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(image);
  if (f.ok()) {
    TouchEverything(**f);
  } else {
    EXPECT_THAT(std::string(f.status().message()), StartsWith("gguf: ")) << what;
  }
}

void ExpectError(const std::string& image, absl::StatusCode code, const std::string& substr) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(image);
  ASSERT_FALSE(f.ok()) << "expected an error containing '" << substr << "'";
  EXPECT_EQ(f.status().code(), code) << f.status();
  EXPECT_THAT(std::string(f.status().message()), StartsWith("gguf: "));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(substr));
}

TEST(GgufTest, ParsesEveryMetadataTypeAndTensor) {
  GgufBuilder b = MakeValid();
  const std::string image = b.Build();
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(image);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.Keys().size(), 18u);
  EXPECT_TRUE(g.HasKey("t.nested"));
  EXPECT_FALSE(g.HasKey("t"));
  EXPECT_EQ(*g.GetString("general.architecture"), "llama");
  EXPECT_EQ(*g.GetInt("t.u8"), 200);
  EXPECT_EQ(*g.GetInt("t.i8"), -100);
  EXPECT_EQ(*g.GetInt("t.u16"), 60000);
  EXPECT_EQ(*g.GetInt("t.i16"), -30000);
  EXPECT_EQ(*g.GetInt("llama.block_count"), 30);
  EXPECT_EQ(*g.GetInt("t.i32"), -7);
  EXPECT_EQ(*g.GetInt("t.u64"), 1ll << 40);
  EXPECT_EQ(*g.GetInt("t.i64"), -(1ll << 50));
  EXPECT_EQ(*g.GetFloat("t.f32"), 1.5);
  EXPECT_EQ(*g.GetFloat("t.f64"), -2.25);
  EXPECT_EQ(*g.GetBool("t.bool"), true);
  EXPECT_THAT(*g.GetStringArray("tokenizer.ggml.tokens"),
              ::testing::ElementsAre("<s>", "", "hello", std::string("a\0b", 3)));
  EXPECT_THAT(*g.GetIntArray("t.i32s"), ::testing::ElementsAre(1, -2, 3));
  EXPECT_THAT(*g.GetFloatArray("t.f32s"), ::testing::ElementsAre(0.5, -1.0));

  ASSERT_EQ(g.tensors().size(), 3u);
  const std::vector<std::vector<int64_t>> dims = {{4, 3}, {64, 2}, {64, 3, 1}};
  const std::vector<GgmlType> types = {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ4_0};
  const std::vector<uint64_t> nbytes = {48, 256, 6 * 18};
  for (size_t i = 0; i < 3; ++i) {
    const GgufTensor& t = g.tensors()[i];
    EXPECT_EQ(t.dims, dims[i]) << t.name;
    EXPECT_EQ(t.type, types[i]) << t.name;
    EXPECT_EQ(t.nbytes, nbytes[i]) << t.name;
    EXPECT_EQ(t.num_elements, t.dims[0] * t.dims[1]) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u) << t.name;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.data), t.nbytes), b.data[t.name]) << t.name;
    absl::StatusOr<const GgufTensor*> by_name = g.GetTensor(t.name);
    ASSERT_TRUE(by_name.ok());
    EXPECT_EQ(*by_name, &t);
  }
  // Offsets are relative to the one data section.
  EXPECT_EQ(g.tensors()[1].data - g.tensors()[0].data, static_cast<ptrdiff_t>(b.offsets["b.f16"]));
}

TEST(GgufTest, GettersNameTheKeyOnMismatchAndAbsence) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(MakeValid().Build());
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  const auto expect = [](const absl::Status& s, absl::StatusCode code, const std::string& key) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("'" + key + "'"));
  };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  expect(g.GetString("missing.key").status(), absl::StatusCode::kNotFound, "missing.key");
  expect(g.GetIntArray("missing.key").status(), absl::StatusCode::kNotFound, "missing.key");
  expect(g.GetTensor("missing.weight").status(), absl::StatusCode::kNotFound, "missing.weight");
  expect(g.GetString("llama.block_count").status(), kInvalid, "llama.block_count");
  expect(g.GetInt("general.architecture").status(), kInvalid, "general.architecture");
  expect(g.GetInt("t.bool").status(), kInvalid, "t.bool");      // a bool is not an integer
  expect(g.GetInt("t.f32").status(), kInvalid, "t.f32");
  expect(g.GetFloat("t.i32").status(), kInvalid, "t.i32");
  expect(g.GetBool("t.u8").status(), kInvalid, "t.u8");
  expect(g.GetInt("t.u64_huge").status(), kInvalid, "t.u64_huge");  // does not fit int64
  expect(g.GetIntArray("t.u64s").status(), kInvalid, "t.u64s");
  expect(g.GetStringArray("t.i32s").status(), kInvalid, "t.i32s");
  expect(g.GetIntArray("t.f32s").status(), kInvalid, "t.f32s");
  expect(g.GetFloatArray("tokenizer.ggml.tokens").status(), kInvalid, "tokenizer.ggml.tokens");
  expect(g.GetIntArray("t.nested").status(), kInvalid, "t.nested");
  expect(g.GetStringArray("general.architecture").status(), kInvalid, "general.architecture");
  expect(g.GetString("t.f32s").status(), kInvalid, "t.f32s");
}

TEST(GgufTest, HonoursCustomAlignment) {
  GgufBuilder b = MakeValid();
  b.alignment = 256;
  b.Scalar<uint32_t>("general.alignment", kU32, 256);
  const std::string image = b.Build();
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(image);
  ASSERT_TRUE(f.ok()) << f.status();
  for (const GgufTensor& t : (*f)->tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 256, 0u) << t.name;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.data), t.nbytes), b.data[t.name]) << t.name;
  }
}

TEST(GgufTest, AcceptsVersion2AndEmptyFiles) {
  GgufBuilder v2 = MakeValid();
  v2.version = 2;
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(v2.Build());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 2u);

  GgufBuilder empty;
  f = GgufFile::FromBytes(empty.Build());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->Keys().empty());
  EXPECT_TRUE((*f)->tensors().empty());
}

TEST(GgufTest, ParsesALargeVocabulary) {
  std::vector<std::string> tokens(100000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = "tok" + std::to_string(i);
  GgufBuilder b;
  b.Kv("tokenizer.ggml.tokens", kArr, StringArrayBytes(tokens));
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(b.Build());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->GetStringArray("tokenizer.ggml.tokens"), tokens);
}

TEST(GgufTest, RejectsEveryTruncation) {
  const std::string image = MakeValid().Build();
  for (size_t n = 0; n < image.size(); ++n) {
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(image.substr(0, n));
    ASSERT_FALSE(f.ok()) << "truncated to " << n << " of " << image.size() << " bytes";
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_THAT(std::string(f.status().message()), StartsWith("gguf: "));
  }
}

TEST(GgufTest, RejectsBadHeaders) {
  GgufBuilder b = MakeValid();
  std::string image = b.Build();
  ExpectError("GGUX" + image.substr(4), absl::StatusCode::kInvalidArgument, "magic");
  ExpectError(Patch(image, b.fields["version"], 1), absl::StatusCode::kUnimplemented, "version 1");
  ExpectError(Patch(image, b.fields["version"], 4), absl::StatusCode::kUnimplemented, "version 4");
  ExpectError(Patch(image, b.fields["tensor_count"], ~0ull), absl::StatusCode::kInvalidArgument, "tensor count");
  ExpectError(Patch(image, b.fields["kv_count"], ~0ull), absl::StatusCode::kInvalidArgument, "metadata count");
  ExpectError(Patch(image, b.fields["kv_count"], 1ull << 40), absl::StatusCode::kInvalidArgument, "metadata count");
}

TEST(GgufTest, RejectsBadMetadata) {
  GgufBuilder b = MakeValid();
  const std::string image = b.Build();
  const auto inv = absl::StatusCode::kInvalidArgument;
  ExpectError(Patch(image, b.fields["keylen:t.i8"], ~0ull), inv, "key length");
  ExpectError(Patch(image, b.fields["type:t.i8"], 13), inv, "'t.i8': unknown value type 13");
  ExpectError(Patch(image, b.fields["type:t.i8"], 0xFFFFFFFF), inv, "unknown value type");
  ExpectError(Patch(image, b.fields["value:general.architecture"], ~0ull), inv, "'general.architecture'");
  ExpectError(Patch(image, b.fields["elemtype:t.i32s"], 99), inv, "'t.i32s': unknown value type 99");
  ExpectError(Patch(image, b.fields["count:t.i32s"], ~0ull), inv, "'t.i32s'");
  ExpectError(Patch(image, b.fields["count:tokenizer.ggml.tokens"], 1ull << 60), inv, "exceeds the remaining");
  // A string inside the array whose length runs past the end.
  const size_t first_len = b.fields["count:tokenizer.ggml.tokens"].pos + 8;
  ExpectError(Patch(image, {first_len, 8}, 1ull << 33), inv, "'tokenizer.ggml.tokens': element 0");

  GgufBuilder dup = MakeValid();
  dup.Scalar<uint32_t>("t.u16", kU32, 1);
  ExpectError(dup.Build(), inv, "duplicate key 't.u16'");

  GgufBuilder nested8;
  nested8.Kv("deep", kArr, NestedArrayBytes(8));
  absl::StatusOr<std::unique_ptr<GgufFile>> ok = GgufFile::FromBytes(nested8.Build());
  ASSERT_TRUE(ok.ok()) << ok.status();
  for (int depth : {9, 100000}) {
    GgufBuilder nested;
    nested.Kv("deep", kArr, NestedArrayBytes(depth));
    ExpectError(nested.Build(), inv, "nested deeper");
  }
}

TEST(GgufTest, RejectsBadAlignment) {
  const auto inv = absl::StatusCode::kInvalidArgument;
  for (uint32_t a : {0u, 3u, 48u, 0xFFFFFFFFu}) {
    GgufBuilder b = MakeValid();
    b.Scalar<uint32_t>("general.alignment", kU32, a);
    ExpectError(b.Build(), inv, "general.alignment");
  }
  GgufBuilder wrong_type = MakeValid();
  wrong_type.Scalar<uint64_t>("general.alignment", kU64, 32);
  ExpectError(wrong_type.Build(), inv, "general.alignment has type UINT64");
}

TEST(GgufTest, RejectsBadTensorInfos) {
  GgufBuilder b = MakeValid();
  const std::string image = b.Build();
  const auto inv = absl::StatusCode::kInvalidArgument;
  ExpectError(Patch(image, b.fields["namelen:b.f16"], ~0ull), inv, "tensor info 1: name length");
  ExpectError(Patch(image, b.fields["ndims:b.f16"], 0), inv, "'b.f16': n_dims 0");
  ExpectError(Patch(image, b.fields["ndims:b.f16"], 5), inv, "'b.f16': n_dims 5");
  ExpectError(Patch(image, b.fields["dim1:b.f16"], 0), inv, "'b.f16': dimension 1 = 0");
  ExpectError(Patch(image, b.fields["dim0:b.f16"], ~0ull), inv, "'b.f16': dimension 0");
  ExpectError(Patch(Patch(image, b.fields["dim0:a.f32"], 1ull << 32), b.fields["dim1:a.f32"], 1ull << 32), inv,
              "'a.f32': element count overflows");
  // Fits int64 elements but not bytes.
  ExpectError(Patch(image, b.fields["dim0:a.f32"], 1ull << 61), inv, "'a.f32': byte size overflows");
  ExpectError(Patch(image, b.fields["dim0:c.q4_0"], 48), inv, "'c.q4_0': dimension 0 = 48 is not a multiple");
  ExpectError(Patch(image, b.fields["ttype:b.f16"], 5), absl::StatusCode::kUnimplemented,
              "'b.f16': unsupported type id 5");
  ExpectError(Patch(image, b.fields["ttype:b.f16"], 0xFFFFFFFF), absl::StatusCode::kUnimplemented, "'b.f16'");
  const uint64_t off = b.offsets["b.f16"];
  ExpectError(Patch(image, b.fields["offset:b.f16"], off + 1), inv, "'b.f16': offset");
  ExpectError(Patch(image, b.fields["offset:b.f16"], 1ull << 40), inv, "'b.f16': data");
  ExpectError(Patch(image, b.fields["offset:b.f16"], ~0ull & ~31ull), inv, "extends past");
  ExpectError(Patch(image, b.fields["offset:b.f16"], 0), inv, "overlap");
  // A larger shape whose data would run past the end of the file.
  ExpectError(Patch(image, b.fields["dim1:c.q4_0"], 4), inv, "'c.q4_0': data");

  GgufBuilder dup = MakeValid();
  dup.Tensor("a.f32", {8}, GgmlType::kF32);
  ExpectError(dup.Build(), inv, "duplicate tensor name 'a.f32'");
}

TEST(GgufTest, HostileValuesInEveryFieldFailCleanly) {
  GgufBuilder b = MakeValid();
  const std::string image = b.Build();
  const std::vector<uint64_t> hostile = {0, 1, 2, 5, 9, 13, 31, 32, 0x7F, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                                         0xFFFFFFFF, 1ull << 32, 1ull << 40, 0x7FFFFFFFFFFFFFFF,
                                         0x8000000000000000, ~0ull, image.size(), image.size() - 1};
  for (const auto& [name, field] : b.fields) {
    for (uint64_t v : hostile) ExpectCleanResult(Patch(image, field, v), name + " = " + std::to_string(v));
  }
}

TEST(GgufTest, RandomByteFlipsFailCleanly) {
  const std::string image = MakeValid().Build();
  int parsed = 0;
  for (uint64_t seed = 0; seed < 3000; ++seed) {
    std::mt19937_64 rng(seed);
    std::string mutated = image;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i) mutated[rng() % mutated.size()] = static_cast<char>(rng());
    if (rng() % 4 == 0) mutated.resize(rng() % mutated.size());
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(mutated);
    if (f.ok()) {
      ++parsed;
      TouchEverything(**f);
    } else {
      EXPECT_THAT(std::string(f.status().message()), StartsWith("gguf: ")) << "seed " << seed;
    }
  }
  // Flips in tensor data leave a valid file, so some must parse.
  EXPECT_GT(parsed, 0);
}

TEST(GgufTest, OpenMapsAFile) {
  GgufBuilder b = MakeValid();
  const std::string image = b.Build();
  const std::string path = ::testing::TempDir() + "/gguf_test_valid.gguf";
  std::ofstream(path, std::ios::binary) << image;
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), 3u);
  for (const GgufTensor& t : (*f)->tensors()) {
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.data), t.nbytes), b.data[t.name]);
  }
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");

  const std::string empty = ::testing::TempDir() + "/gguf_test_empty.gguf";
  std::ofstream(empty, std::ios::binary).flush();
  f = GgufFile::Open(empty);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(empty));

  f = GgufFile::Open(::testing::TempDir() + "/does_not_exist.gguf");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("does_not_exist.gguf"));

  EXPECT_FALSE(GgufFile::Open(::testing::TempDir()).ok());
  std::filesystem::remove(path);
  std::filesystem::remove(empty);
}

TEST(GgufTest, ReadsTheRealModel) {
  const char* root = std::getenv("ATTNSERVE_SOURCE_DIR");
  if (root == nullptr) GTEST_SKIP() << "ATTNSERVE_SOURCE_DIR is not set (run through ctest)";
  const std::string path = std::string(root) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is not there (scripts/setup.sh fetches it)";

  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(*g.GetString("general.architecture"), "llama");
  EXPECT_EQ(*g.GetInt("llama.block_count"), 30);
  EXPECT_EQ(g.GetStringArray("tokenizer.ggml.tokens")->size(), 49152u);
  absl::StatusOr<const GgufTensor*> embd = g.GetTensor("token_embd.weight");
  ASSERT_TRUE(embd.ok()) << embd.status();
  EXPECT_EQ((*embd)->dims, (std::vector<int64_t>{576, 49152}));

  // Every cut inside the header region (tokenizer included) is rejected.
  constexpr size_t kHeaderRegion = 2 << 20;
  std::string prefix(kHeaderRegion, '\0');
  std::ifstream in(path, std::ios::binary);
  in.read(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  prefix.resize(static_cast<size_t>(in.gcount()));
  for (size_t i = 0; i < 40; ++i) {
    const size_t n = prefix.size() * i / 40 + i * 13;
    absl::StatusOr<std::unique_ptr<GgufFile>> cut = GgufFile::FromBytes(std::string_view(prefix).substr(0, n));
    ASSERT_FALSE(cut.ok()) << "cut at " << n;
    EXPECT_THAT(std::string(cut.status().message()), StartsWith("gguf: "));
  }
}

}  // namespace
}  // namespace attnserve
