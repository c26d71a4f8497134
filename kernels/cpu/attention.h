// Paged attention on the CPU with the policy hooks of attention_hooks.h.
//
// Keys and values live in fixed-size pages of fp16: page p of a layer holds
// [n_kv_heads][page_size][head_dim] keys (and the same for values), one
// slice per KV head (see PagedKv). A sequence's token at position t is slot
// t % page_size of its block t / page_size. Keys are stored after RoPE.
#pragma once

#include <cstdint>

#include "kernels/common/attention_hooks.h"
#include "kernels/common/ggml_types.h"
#include "kernels/common/paged_kv.h"

namespace attnserve {

// Queries of one sequence for one layer.
struct AttentionQueries {
  const float* q = nullptr;               // [n_queries][n_q_heads][head_dim]
  const int32_t* positions = nullptr;     // [n_queries], each < kv.num_tokens
  int32_t n_queries = 0;
  int32_t n_q_heads = 0;                  // a multiple of n_kv_heads (GQA)
  // Streaming positions=CACHE: the same queries rotated at their cache slot
  // (CacheSlot in attention_hooks.h), layout of q; they replace q for the
  // sink keys (positions < params.sink_tokens). Null: q for every key.
  const float* sink_q = nullptr;
  // Quest: only these keys are read, as if the others were hidden (sorted,
  // disjoint, each query's own position inside one). Null: every key of
  // the visible set.
  const KeyRange* key_ranges = nullptr;
  int32_t num_key_ranges = 0;
  // Output, when set ([n_queries][n_q_heads], the kernel's heads only): the
  // log of each row's softmax denominator, max included, so that another
  // part of the attention (the linear mode's) can join the normalisation.
  float* lse = nullptr;
};

// out[i][h][:] = Σ_j p_ij v_j for the query heads of KV head `kv_head`
// (heads kv_head*G .. kv_head*G+G-1, G = n_q_heads / n_kv_heads), reading each
// key and value page once for the whole group. out has the layout of q. Two
// passes (logits of all keys, then values) with llama.cpp's roundings: q and
// the weights p rounded to fp16 (see attention.cc). With queries.sink_q the
// sink keys' logits use it (rounded to fp16 the same way).
void PagedAttentionKvHead(const AttentionQueries& queries, const PagedKv& kv,
                          const SequenceAttentionParams& params, int kv_head, float* out);

// ACT's prefill statistic: for each query head g of KV head `kv_head`,
// mass[g * kv.num_tokens + j] += Σ_i p_ij over the call's queries, p the
// probabilities PagedAttentionKvHead would weight values with (every hook
// applied; reweighting too when params carries key sets). No outputs.
void AttentionColumnMassKvHead(const AttentionQueries& queries, const PagedKv& kv,
                               const SequenceAttentionParams& params, int kv_head, double* mass);

// All KV heads, naive: materialises logits, softmax, reweighting, in double.
void PagedAttentionReference(const AttentionQueries& queries, const PagedKv& kv,
                             const SequenceAttentionParams& params, float* out);

}  // namespace attnserve
