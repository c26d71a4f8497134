// The linear attention mode on the GPU (DESIGN.md §4, `linear`), what
// kernels/cpu/linear_attention.h and the CPU backend do: keys that leave the
// window are folded into a per-(sequence, layer, KV head) state
// S = Σ φ(k) vᵀ, z = Σ φ(k) (φ: kernels/common/taylor.h), and a query's
// output joins the exact part (DecodeAttentionCuda's output and its log
// denominator) in one normalisation:
//   out = (o_exact · e^lse + φ(q)ᵀS) / (e^lse + φ(q)·z),  q scaled by the head's logit scale.
// Asynchronous; nothing allocates.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/common/attention_hooks.h"
#include "kernels/common/paged_kv.h"

namespace attnserve {

// Floats of one KV head's state: S [features][head_dim], then z [features].
size_t LinearStateFloats(int32_t head_dim);

// Positions [fold_begin, fold_end) of this sequence's layer join its
// states. Device pointers.
struct LinearFoldSequence {
  PagedKv kv;
  int32_t fold_begin = 0;
  int32_t fold_end = 0;
  float* states = nullptr;  // [n_kv_heads][LinearStateFloats(head_dim)]
};

absl::Status FoldKeysCuda(const LinearFoldSequence* seqs, int32_t n_seqs, int32_t n_kv_heads, int32_t head_dim,
                          void* stream);

// One query: row `row` of q, lse and out. Keys [pending_begin,
// pending_end) have left its window but are not folded yet (a prefill
// chunk's earlier queries' keys): they join the state's part with their
// own Taylor weights, as the CPU backend adds them. Device pointers.
struct LinearReadSequence {
  const float* states = nullptr;            // as LinearFoldSequence::states
  const AttentionHeadParams* heads = nullptr;  // [n_q_heads]: the logit scales
  int32_t row = 0;
  PagedKv kv;                               // read for the pending keys only
  int32_t pending_begin = 0;
  int32_t pending_end = 0;
};

struct LinearReadArgs {
  const LinearReadSequence* seqs = nullptr;  // [n_seqs]
  int32_t n_seqs = 0;
  const float* q = nullptr;   // [rows][n_q_heads][head_dim]
  const float* lse = nullptr; // [rows][n_q_heads]: the exact part's log denominator
  float* out = nullptr;       // [rows][n_q_heads][head_dim]: the exact part in, the joined output out
  int32_t n_q_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;       // <= 128
};

absl::Status JoinLinearStateCuda(const LinearReadArgs& args, void* stream);

}  // namespace attnserve
