// A Llama model's weights in device memory, as the CUDA backend's GEMMs read
// them: matrices in bf16 (GGUF types dequantized at load), the Q, K and V
// projections stacked into one matrix and the gate and up projections into
// another; norms in fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model.h"
#include "kernels/cuda/device.h"

namespace attnserve {

struct DeviceLayerWeights {
  const float* attn_norm = nullptr;     // [hidden]
  const uint16_t* wqkv = nullptr;       // [q_dim + 2 * kv_dim][hidden]
  const uint16_t* wo = nullptr;         // [hidden][q_dim]
  const float* ffn_norm = nullptr;      // [hidden]
  const uint16_t* w_gate_up = nullptr;  // [2 * ffn][hidden]
  const uint16_t* w_down = nullptr;     // [hidden][ffn]
};

struct DeviceWeights {
  std::vector<DeviceBuffer> buffers;     // owns what the pointers name
  const uint16_t* token_embd = nullptr;  // [vocab][hidden]
  const float* output_norm = nullptr;    // [hidden]
  const uint16_t* output = nullptr;      // [vocab][hidden]; token_embd when tied
  std::vector<DeviceLayerWeights> layers;

  // Bytes one decode step reads: every matrix and norm, the output
  // projection; of an untied embedding table only its rows.
  int64_t DecodeBytes(const ModelConfig& config) const;
};

// Synchronous copies of the model's weights.
absl::StatusOr<DeviceWeights> UploadWeights(const Model& model);

// Random weights of `config`'s shapes (uniform, unit variance out of unit
// variance in; norms 1), filled on `stream` (a cudaStream_t) and waited for:
// benchmarks at shapes without a file.
absl::StatusOr<DeviceWeights> RandomWeights(const ModelConfig& config, void* stream);

}  // namespace attnserve
