// The elementwise steps of a Llama layer on the GPU, between the cuBLAS
// GEMMs: embedding lookup, the fused QKV projection's split with RoPE,
// SwiGLU, conversions to the GEMMs' bf16 inputs and row gathers. Device
// pointers; asynchronous launches on `stream` (a cudaStream_t); nothing
// allocates. bf16 values are raw bits (kernels/common/half.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/common/rope_math.h"
#include "kernels/common/token_pick.h"

namespace attnserve {

// x[r] = table[tokens[r]] as floats; table [vocab][hidden] bf16.
absl::Status EmbedRowsCuda(const uint16_t* table, const int32_t* tokens, int64_t rows, int32_t hidden, float* x,
                           void* stream);

struct QkvSplitArgs {
  const float* qkv = nullptr;        // [rows][n_heads * head_dim + 2 * n_kv_heads * head_dim]: q | k | v
  int64_t rows = 0;
  const int32_t* positions = nullptr;  // [rows]
  // Streaming positions=CACHE: every query is also rotated at slots[r]
  // into sink_q (the attention kernel reads sink_q for every row when it
  // reads it at all: rows that need no second rotation have slot =
  // position); null: no row needs it.
  const int32_t* slots = nullptr;
  float* q = nullptr;       // [rows][n_heads * head_dim], rotated at positions
  float* k = nullptr;       // [rows][n_kv_heads * head_dim], rotated
  float* v = nullptr;       // [rows][n_kv_heads * head_dim]
  float* sink_q = nullptr;  // layout of q
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t rotary_dim = 0;   // the leading rotary_dim values of each head turn, in adjacent pairs
  RopeAngles rope;
};
absl::Status QkvSplitRopeCuda(const QkvSplitArgs& args, void* stream);

// out[r][i] = bf16(silu(gate_up[r][i]) * gate_up[r][ffn + i]); gate_up
// [rows][2 * ffn] is the fused gate and up projection.
absl::Status SwiGluBf16Cuda(const float* gate_up, int64_t rows, int32_t ffn, uint16_t* out, void* stream);

// out[i] = bf16(in[i]).
absl::Status ToBf16Cuda(const float* in, int64_t n, uint16_t* out, void* stream);

// out[i] = x[rows[i]], `n` rows of `width` floats.
absl::Status GatherRowsCuda(const float* x, const int32_t* rows, int64_t n, int32_t width, float* out, void* stream);

// results[r] = picks[r] with the token row r's pick draws
// (kernels/common/token_pick.h; PickToken in engine/backend is the host's)
// and, when asked, its log-probabilities: at temperature 0 the id of the
// largest value, the lowest on a tie, NaN skipped (0 for a row of NaN).
// The picks' logit edits are applied to the rows in place first.
absl::Status PickTokensCuda(float* logits, int64_t rows, int32_t vocab, const TokenPick* picks, TokenPick* results,
                            void* stream);

// out[i] = bf16 of a uniform value in [-scale, scale] hashed from (seed, i):
// weights of the right shapes for benchmarks (--load-format dummy).
absl::Status FillRandomBf16Cuda(uint16_t* out, int64_t n, uint64_t seed, float scale, void* stream);

// SiLU as ggml computes it, x / (1 + e^-x).
ATTN_HD float Silu(float x) { return x / (1.0f + expf(-x)); }

}  // namespace attnserve
