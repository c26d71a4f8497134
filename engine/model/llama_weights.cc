#include "engine/model/llama_weights.h"

#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "kernels/common/ggml_types.h"
#include "kernels/common/half.h"
#include "kernels/cpu/quant.h"

namespace attnserve {
namespace {

absl::StatusOr<const GgufTensor*> TensorWithShape(const GgufFile& gguf, const std::string& name,
                                                  std::vector<int64_t> dims) {
  absl::StatusOr<const GgufTensor*> t = gguf.GetTensor(name);
  if (!t.ok()) return t.status();
  if ((*t)->dims != dims) {
    std::string want, got;
    for (int64_t d : dims) absl::StrAppend(&want, want.empty() ? "" : ", ", d);
    for (int64_t d : (*t)->dims) absl::StrAppend(&got, got.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(
        absl::StrCat("gguf: tensor '", name, "' has shape {", got, "}, expected {", want, "}"));
  }
  return *t;
}

absl::StatusOr<WeightMatrix> Matrix(const GgufFile& gguf, const std::string& name, int64_t rows, int64_t cols) {
  absl::StatusOr<const GgufTensor*> t = TensorWithShape(gguf, name, {cols, rows});
  if (!t.ok()) return t.status();
  WeightMatrix m;
  m.type = (*t)->type;
  m.data = (*t)->data;
  m.rows = rows;
  m.cols = cols;
  m.row_bytes = (*t)->nbytes / static_cast<uint64_t>(rows);
  if (m.type == GgmlType::kQ8_1 || m.type == GgmlType::kQ8_K) {  // activation-only formats
    return absl::UnimplementedError(absl::StrCat("gguf: tensor '", name, "' has a type weights cannot use"));
  }
  return m;
}

absl::StatusOr<const float*> NormVector(const GgufFile& gguf, const std::string& name, int64_t n,
                                        std::vector<std::vector<float>>& converted) {
  absl::StatusOr<const GgufTensor*> t = TensorWithShape(gguf, name, {n});
  if (!t.ok()) return t.status();
  if ((*t)->type == GgmlType::kF32) return reinterpret_cast<const float*>((*t)->data);
  converted.emplace_back(n);
  DequantizeRow((*t)->type, (*t)->data, converted.back().data(), n);
  return converted.back().data();
}

}  // namespace

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const GgufFile& gguf, const ModelConfig& c) {
  LlamaWeights w;
  // Conversions must not reallocate while pointers into them are handed out.
  w.converted_norms.reserve(2 * c.n_layers + 1);
  ATTN_ASSIGN_OR_RETURN(w.token_embd, Matrix(gguf, "token_embd.weight", c.vocab_size, c.hidden));
  ATTN_ASSIGN_OR_RETURN(w.output_norm, NormVector(gguf, "output_norm.weight", c.hidden, w.converted_norms));
  if (c.tied_embeddings) {
    w.output = w.token_embd;
  } else {
    ATTN_ASSIGN_OR_RETURN(w.output, Matrix(gguf, "output.weight", c.vocab_size, c.hidden));
  }
  w.layers.resize(c.n_layers);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const std::string b = absl::StrCat("blk.", l, ".");
    LlamaLayerWeights& L = w.layers[l];
    ATTN_ASSIGN_OR_RETURN(L.attn_norm, NormVector(gguf, b + "attn_norm.weight", c.hidden, w.converted_norms));
    ATTN_ASSIGN_OR_RETURN(L.wq, Matrix(gguf, b + "attn_q.weight", c.q_dim(), c.hidden));
    ATTN_ASSIGN_OR_RETURN(L.wk, Matrix(gguf, b + "attn_k.weight", c.kv_dim(), c.hidden));
    ATTN_ASSIGN_OR_RETURN(L.wv, Matrix(gguf, b + "attn_v.weight", c.kv_dim(), c.hidden));
    ATTN_ASSIGN_OR_RETURN(L.wo, Matrix(gguf, b + "attn_output.weight", c.hidden, c.q_dim()));
    ATTN_ASSIGN_OR_RETURN(L.ffn_norm, NormVector(gguf, b + "ffn_norm.weight", c.hidden, w.converted_norms));
    ATTN_ASSIGN_OR_RETURN(L.w_gate, Matrix(gguf, b + "ffn_gate.weight", c.ffn_hidden, c.hidden));
    ATTN_ASSIGN_OR_RETURN(L.w_up, Matrix(gguf, b + "ffn_up.weight", c.ffn_hidden, c.hidden));
    ATTN_ASSIGN_OR_RETURN(L.w_down, Matrix(gguf, b + "ffn_down.weight", c.hidden, c.ffn_hidden));
    for (const WeightMatrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      w.matrix_bytes += static_cast<int64_t>(m->row_bytes) * m->rows;
    }
  }
  w.matrix_bytes += static_cast<int64_t>(w.output.row_bytes) * w.output.rows;
  return w;
}

namespace {

// A [rows x cols] Q8_0 matrix of random quants, its storage appended to `owned`.
WeightMatrix RandomQ8Matrix(int64_t rows, int64_t cols, uint64_t& state,
                            std::vector<std::unique_ptr<uint8_t[]>>& owned) {
  const int64_t blocks = cols / kQK;
  WeightMatrix m;
  m.type = GgmlType::kQ8_0;
  m.rows = rows;
  m.cols = cols;
  m.row_bytes = static_cast<size_t>(blocks) * sizeof(BlockQ8_0);
  // Every byte is written below: no zero fill first (gigabytes at 8B).
  const std::unique_ptr<uint8_t[]>& bytes =
      owned.emplace_back(std::make_unique_for_overwrite<uint8_t[]>(m.row_bytes * static_cast<size_t>(rows)));
  const fp16_t scale = FloatToFp16(std::sqrt(3.0f / static_cast<float>(cols)) / 127.0f);
  auto* block = reinterpret_cast<BlockQ8_0*>(bytes.get());
  for (int64_t b = 0; b < rows * blocks; ++b, ++block) {
    block->d = scale;
    for (int8_t& q : block->qs) {
      // xorshift64*: fast enough for billions of quants.
      state ^= state >> 12;
      state ^= state << 25;
      state ^= state >> 27;
      // A uniform draw from [-127, 127] (255 values, as Q8_0 quantizes).
      q = static_cast<int8_t>(static_cast<int>(((state * 0x2545F4914F6CDD1DULL) >> 32) * 255 >> 32) - 127);
    }
  }
  m.data = bytes.get();
  return m;
}

}  // namespace

absl::StatusOr<LlamaWeights> RandomLlamaWeights(const ModelConfig& c, uint64_t seed) {
  for (const int32_t cols : {c.hidden, c.q_dim(), c.ffn_hidden}) {
    if (cols % kQK != 0) {
      return absl::InvalidArgumentError(absl::StrCat("random weights: width ", cols, " is not a multiple of ", kQK));
    }
  }
  LlamaWeights w;
  uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
  // One vector of ones serves every norm.
  w.converted_norms.emplace_back(c.hidden, 1.0f);
  const float* ones = w.converted_norms.back().data();
  w.token_embd = RandomQ8Matrix(c.vocab_size, c.hidden, state, w.random_matrices);
  w.output_norm = ones;
  w.output = RandomQ8Matrix(c.vocab_size, c.hidden, state, w.random_matrices);
  w.layers.resize(c.n_layers);
  for (LlamaLayerWeights& L : w.layers) {
    L.attn_norm = ones;
    L.ffn_norm = ones;
    L.wq = RandomQ8Matrix(c.q_dim(), c.hidden, state, w.random_matrices);
    L.wk = RandomQ8Matrix(c.kv_dim(), c.hidden, state, w.random_matrices);
    L.wv = RandomQ8Matrix(c.kv_dim(), c.hidden, state, w.random_matrices);
    L.wo = RandomQ8Matrix(c.hidden, c.q_dim(), state, w.random_matrices);
    L.w_gate = RandomQ8Matrix(c.ffn_hidden, c.hidden, state, w.random_matrices);
    L.w_up = RandomQ8Matrix(c.ffn_hidden, c.hidden, state, w.random_matrices);
    L.w_down = RandomQ8Matrix(c.hidden, c.ffn_hidden, state, w.random_matrices);
    for (const WeightMatrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      w.matrix_bytes += static_cast<int64_t>(m->row_bytes) * m->rows;
    }
  }
  w.matrix_bytes += static_cast<int64_t>(w.output.row_bytes) * w.output.rows;
  return w;
}

}  // namespace attnserve
