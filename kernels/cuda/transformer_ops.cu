#include "kernels/cuda/transformer_ops.h"

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/transformer_ops_kernels.cuh"

namespace attnserve {

absl::Status EmbedRowsCuda(const uint16_t* table, const int32_t* tokens, int64_t rows, int32_t hidden, float* x,
                           void* stream) {
  return RunEmbedRows(table, tokens, rows, hidden, x, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status QkvSplitRopeCuda(const QkvSplitArgs& a, void* stream) {
  return RunQkvSplitRope(a, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status SwiGluBf16Cuda(const float* gate_up, int64_t rows, int32_t ffn, uint16_t* out, void* stream) {
  return RunSwiGluBf16(gate_up, rows, ffn, out, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status ToBf16Cuda(const float* in, int64_t n, uint16_t* out, void* stream) {
  return RunToBf16(in, n, out, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status FillRandomBf16Cuda(uint16_t* out, int64_t n, uint64_t seed, float scale, void* stream) {
  return RunFillRandomBf16(out, n, seed, scale, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status PickTokensCuda(float* logits, int64_t rows, int32_t vocab, const TokenPick* picks, TokenPick* results,
                            void* stream) {
  return RunPickTokens(logits, rows, vocab, picks, results, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status GatherRowsCuda(const float* x, const int32_t* rows, int64_t n, int32_t width, float* out, void* stream) {
  return RunGatherRows(x, rows, n, width, out, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
