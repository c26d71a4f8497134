// Views of a Llama model's weights inside a mapped GGUF file, checked
// against the ModelConfig. Norm vectors are kept as f32 (converted at load
// when the file stores them in another type); matrices stay quantized.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/gguf.h"
#include "engine/model/model_config.h"
#include "kernels/cpu/matmul.h"

namespace attnserve {

struct LlamaLayerWeights {
  const float* attn_norm = nullptr;  // [hidden]
  WeightMatrix wq;                   // [q_dim x hidden]
  WeightMatrix wk;                   // [kv_dim x hidden]
  WeightMatrix wv;                   // [kv_dim x hidden]
  WeightMatrix wo;                   // [hidden x q_dim]
  const float* ffn_norm = nullptr;   // [hidden]
  WeightMatrix w_gate;               // [ffn_hidden x hidden]
  WeightMatrix w_up;                 // [ffn_hidden x hidden]
  WeightMatrix w_down;               // [hidden x ffn_hidden]
};

struct LlamaWeights {
  WeightMatrix token_embd;             // [vocab x hidden]; rows are embeddings
  const float* output_norm = nullptr;  // [hidden]
  WeightMatrix output;                 // [vocab x hidden]; token_embd when tied
  std::vector<LlamaLayerWeights> layers;
  std::vector<std::vector<float>> converted_norms;  // owns norms not stored as f32
  // Owns RandomLlamaWeights' matrices (and makes the struct move-only: the
  // views point into it).
  std::vector<std::unique_ptr<uint8_t[]>> random_matrices;
  int64_t matrix_bytes = 0;  // bytes of all matrices read per forward token
};

// The returned views point into `gguf`, which must outlive them.
absl::StatusOr<LlamaWeights> LoadLlamaWeights(const GgufFile& gguf, const ModelConfig& config);

// Random weights in `config`'s shapes, in memory the result owns (`serve
// --load-format dummy` on the CPU): Q8_0 matrices uniform in
// ±sqrt(3 / fan_in), so that unit-variance inputs give unit-variance
// outputs, as the CUDA backend's; norms of ones; the output projection
// untied. The same seed gives the same weights.
absl::StatusOr<LlamaWeights> RandomLlamaWeights(const ModelConfig& config, uint64_t seed);

}  // namespace attnserve
