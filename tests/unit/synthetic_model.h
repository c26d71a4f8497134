// A small random Llama written as a GGUF on the spot and loadable with
// LoadModel, for tests that need a model where the default one cannot be
// (a GPU machine without network or room for the file): a byte-level
// vocabulary (the 256 GPT-2 byte symbols, then BOS and EOS), no merges, F32
// weights keeping activations near unit variance, tied embeddings.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tests/unit/gguf_builder.h"

namespace attnserve {

struct SyntheticLlamaShape {
  int32_t n_layers = 6;
  int32_t hidden = 256;
  int32_t n_heads = 4;  // head_dim 64
  int32_t n_kv_heads = 2;
  int32_t ffn = 512;
  int32_t context = 2048;
  uint32_t seed = 1;
  // Tokens past the 258 (`<t258>`, ...): a vocabulary of a real model's
  // size, for weights drawn at random in its shape.
  int32_t vocab = 258;
};

// GPT-2's printable stand-in for byte b (its bytes_to_unicode), as UTF-8.
inline std::string Gpt2ByteSymbol(int b) {
  const auto printable = [](int c) { return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF); };
  int code = b;
  if (!printable(b)) {
    int n = 0;
    for (int c = 0; c < b; ++c) n += !printable(c);
    code = 256 + n;
  }
  std::string out;
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
  return out;
}

// Writes the model to `path`; false when the file cannot be written.
// A file of its own for each process under the temporary directory: test
// processes that run at once never write or map each other's. Callers
// remove it once loaded (the mapping outlives the name): LoadSyntheticLlama.
inline std::string SyntheticModelPath(const std::string& stem) {
  return (std::filesystem::temp_directory_path() / (stem + "_" + std::to_string(getpid()) + ".gguf")).string();
}

inline bool WriteSyntheticLlama(const std::string& path, const SyntheticLlamaShape& s = {}) {
  using namespace testing_gguf;
  GgufBuilder b;
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int byte = 0; byte < 256; ++byte) {
    tokens.push_back(Gpt2ByteSymbol(byte));
    types.push_back(1);
  }
  tokens.push_back("<|bos|>");
  tokens.push_back("<|eos|>");
  types.push_back(3);
  types.push_back(3);
  for (int32_t t = static_cast<int32_t>(tokens.size()); t < s.vocab; ++t) {
    tokens.push_back("<t" + std::to_string(t) + ">");
    types.push_back(1);
  }
  const uint64_t vocab = tokens.size();
  b.String("general.architecture", "llama");
  b.String("general.name", "synthetic");
  b.Scalar<uint32_t>("llama.block_count", kU32, s.n_layers);
  b.Scalar<uint32_t>("llama.embedding_length", kU32, s.hidden);
  b.Scalar<uint32_t>("llama.attention.head_count", kU32, s.n_heads);
  b.Scalar<uint32_t>("llama.attention.head_count_kv", kU32, s.n_kv_heads);
  b.Scalar<uint32_t>("llama.feed_forward_length", kU32, s.ffn);
  b.Scalar<uint32_t>("llama.context_length", kU32, s.context);
  b.Scalar<float>("llama.rope.freq_base", kF32, 10000.0f);
  b.Scalar<float>("llama.attention.layer_norm_rms_epsilon", kF32, 1e-5f);
  b.String("tokenizer.ggml.model", "gpt2");
  b.Kv("tokenizer.ggml.tokens", kArr, StringArrayBytes(tokens));
  b.Kv("tokenizer.ggml.token_type", kArr, ArrayBytes(kI32, types));
  b.Kv("tokenizer.ggml.merges", kArr, StringArrayBytes({}));
  b.Scalar<uint32_t>("tokenizer.ggml.bos_token_id", kU32, 256);
  b.Scalar<uint32_t>("tokenizer.ggml.eos_token_id", kU32, 257);
  b.Scalar<uint8_t>("tokenizer.ggml.add_bos_token", kBool, 1);

  std::mt19937 rng(s.seed);
  const auto normal = [&](uint64_t n, float stddev) {
    std::normal_distribution<float> d(0.0f, stddev);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
  };
  // GGUF lists a matrix's dims as (input features, output features).
  const auto matrix = [&](const std::string& name, uint64_t in, uint64_t out) {
    b.F32Tensor(name, {in, out}, normal(in * out, 1.0f / std::sqrt(static_cast<float>(in))));
  };
  const uint64_t hidden = s.hidden, head_dim = s.hidden / s.n_heads, kv_dim = head_dim * s.n_kv_heads;
  const std::vector<float> ones(hidden, 1.0f);
  // Tied: the output projection too. The final norm leaves rows of length
  // sqrt(hidden), so this spreads the logits a few nats, as a trained model's.
  b.F32Tensor("token_embd.weight", {hidden, vocab}, normal(hidden * vocab, 2.5f / std::sqrt(static_cast<float>(hidden))));
  b.F32Tensor("output_norm.weight", {hidden}, ones);
  for (int32_t l = 0; l < s.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    b.F32Tensor(p + "attn_norm.weight", {hidden}, ones);
    matrix(p + "attn_q.weight", hidden, hidden);
    matrix(p + "attn_k.weight", hidden, kv_dim);
    matrix(p + "attn_v.weight", hidden, kv_dim);
    matrix(p + "attn_output.weight", hidden, hidden);
    b.F32Tensor(p + "ffn_norm.weight", {hidden}, ones);
    matrix(p + "ffn_gate.weight", hidden, s.ffn);
    matrix(p + "ffn_up.weight", hidden, s.ffn);
    matrix(p + "ffn_down.weight", s.ffn, hidden);
  }
  std::ofstream out(path, std::ios::binary);
  const std::string image = b.Build();
  out.write(image.data(), static_cast<std::streamsize>(image.size()));
  return static_cast<bool>(out);
}

// `load` (LoadModel, LoadModelWithoutWeights, ...) on a synthetic model
// written to a file of this process's own, removed once loaded; what
// `load` returns, or what it would have failed with when the file could
// not be written.
template <typename Load>
auto LoadSyntheticLlama(const std::string& stem, Load load, const SyntheticLlamaShape& shape = {}) {
  const std::string path = SyntheticModelPath(stem);
  using Result = decltype(load(path));
  if (!WriteSyntheticLlama(path, shape)) return Result(absl::InternalError("cannot write " + path));
  Result loaded = load(path);
  std::filesystem::remove(path);
  return loaded;
}

}  // namespace attnserve
