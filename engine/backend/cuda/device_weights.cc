#include "engine/backend/cuda/device_weights.h"

#include <cmath>
#include <initializer_list>
#include <span>

#include "engine/common/status_macros.h"
#include "engine/model/bf16_weights.h"
#include "kernels/cuda/transformer_ops.h"

namespace attnserve {
namespace {

template <typename T>
absl::Status Upload(std::span<const T> host, const T** at, DeviceWeights& dw) {
  ATTN_ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(host.size_bytes()));
  ATTN_RETURN_IF_ERROR(b.CopyFromHost(host.data(), host.size_bytes()));
  *at = b.as<T>();
  dw.buffers.push_back(std::move(b));
  return absl::OkStatus();
}

absl::Status UploadStacked(std::initializer_list<const WeightMatrix*> matrices, const uint16_t** at,
                           DeviceWeights& dw) {
  ATTN_ASSIGN_OR_RETURN(std::vector<uint16_t> bf16,
                        StackBf16(std::span<const WeightMatrix* const>(matrices.begin(), matrices.size())));
  return Upload(std::span<const uint16_t>(bf16), at, dw);
}

}  // namespace

int64_t DeviceWeights::DecodeBytes(const ModelConfig& c) const {
  int64_t bytes = 0;
  for (const DeviceBuffer& b : buffers) bytes += static_cast<int64_t>(b.size());
  if (output != token_embd) bytes -= static_cast<int64_t>(c.vocab_size) * c.hidden * sizeof(uint16_t);
  return bytes;
}

absl::StatusOr<DeviceWeights> UploadWeights(const Model& model) {
  const ModelConfig& c = model.config;
  const LlamaWeights& w = model.weights;
  DeviceWeights dw;
  auto norm = [&](const float* host) { return std::span<const float>(host, static_cast<size_t>(c.hidden)); };
  ATTN_RETURN_IF_ERROR(UploadStacked({&w.token_embd}, &dw.token_embd, dw));
  if (w.output.data == w.token_embd.data) {
    dw.output = dw.token_embd;
  } else {
    ATTN_RETURN_IF_ERROR(UploadStacked({&w.output}, &dw.output, dw));
  }
  ATTN_RETURN_IF_ERROR(Upload(norm(w.output_norm), &dw.output_norm, dw));
  dw.layers.resize(c.n_layers);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const LlamaLayerWeights& lw = w.layers[l];
    DeviceLayerWeights& d = dw.layers[l];
    ATTN_RETURN_IF_ERROR(Upload(norm(lw.attn_norm), &d.attn_norm, dw));
    ATTN_RETURN_IF_ERROR(Upload(norm(lw.ffn_norm), &d.ffn_norm, dw));
    ATTN_RETURN_IF_ERROR(UploadStacked({&lw.wq, &lw.wk, &lw.wv}, &d.wqkv, dw));
    ATTN_RETURN_IF_ERROR(UploadStacked({&lw.wo}, &d.wo, dw));
    ATTN_RETURN_IF_ERROR(UploadStacked({&lw.w_gate, &lw.w_up}, &d.w_gate_up, dw));
    ATTN_RETURN_IF_ERROR(UploadStacked({&lw.w_down}, &d.w_down, dw));
  }
  return dw;
}

absl::StatusOr<DeviceWeights> RandomWeights(const ModelConfig& c, void* stream) {
  DeviceWeights dw;
  uint64_t seed = 1;
  // Uniform in ±sqrt(3 / fan_in): unit variance out of unit-variance inputs.
  auto random = [&](int64_t rows, int64_t cols, const uint16_t** at) -> absl::Status {
    ATTN_ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(static_cast<size_t>(rows * cols) * sizeof(uint16_t)));
    ATTN_RETURN_IF_ERROR(FillRandomBf16Cuda(b.as<uint16_t>(), rows * cols, seed++,
                                            std::sqrt(3.0f / static_cast<float>(cols)), stream));
    *at = b.as<uint16_t>();
    dw.buffers.push_back(std::move(b));
    return absl::OkStatus();
  };
  const std::vector<float> ones(c.hidden, 1.0f);
  ATTN_RETURN_IF_ERROR(random(c.vocab_size, c.hidden, &dw.token_embd));
  ATTN_RETURN_IF_ERROR(random(c.vocab_size, c.hidden, &dw.output));
  ATTN_RETURN_IF_ERROR(Upload(std::span<const float>(ones), &dw.output_norm, dw));
  dw.layers.resize(c.n_layers);
  for (DeviceLayerWeights& d : dw.layers) {
    ATTN_RETURN_IF_ERROR(Upload(std::span<const float>(ones), &d.attn_norm, dw));
    ATTN_RETURN_IF_ERROR(Upload(std::span<const float>(ones), &d.ffn_norm, dw));
    ATTN_RETURN_IF_ERROR(random(c.q_dim() + 2 * c.kv_dim(), c.hidden, &d.wqkv));
    ATTN_RETURN_IF_ERROR(random(c.hidden, c.q_dim(), &d.wo));
    ATTN_RETURN_IF_ERROR(random(2 * c.ffn_hidden, c.hidden, &d.w_gate_up));
    ATTN_RETURN_IF_ERROR(random(c.hidden, c.ffn_hidden, &d.w_down));
  }
  ATTN_RETURN_IF_ERROR(CudaStreamSync(stream));
  return dw;
}

}  // namespace attnserve
