// Decode attention on the GPU over the paged fp16 KV cache: one query per
// sequence, every policy hook of attention_hooks.h read from the sequence's
// own parameters, so one launch serves a batch whose sequences have
// different policies. Split-K (flash decoding): each (sequence, KV head,
// split of kSplitKeys keys) block keeps a running maximum, two softmax sums
// and two value accumulators (ACT's key set S and the rest), and a second
// kernel merges the splits, adds the virtual sink to the denominator and
// applies ACT's reweighting. The launch is asynchronous; nothing here
// allocates.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/common/attention_hooks.h"
#include "kernels/common/paged_kv.h"

namespace attnserve {

// One sequence's query, as a launch's `layer` reads it (AtLayer): its keys
// in that layer and that layer's parameters. Every pointer, including those
// inside kv and params, is a device pointer.
struct DecodeSequence {
  PagedKv kv;                       // keys at positions [0, query_pos] present; layer 0's view
  SequenceAttentionParams params;   // heads: [n_q_heads]; every layer's when layer_params is null
  // [n_layers]: each layer's parameters, in place of params.
  const SequenceAttentionParams* layer_params = nullptr;
  int32_t query_pos = 0;
  // Quest: per KV head g, only the keys in key_ranges[g * key_ranges_stride
  // + i], i < num_key_ranges[g] (sorted, disjoint) are read, in layers from
  // key_ranges_from_layer on. Null: all of the visible set.
  const KeyRange* key_ranges = nullptr;
  const int32_t* num_key_ranges = nullptr;
  int32_t key_ranges_stride = 0;
  int32_t key_ranges_from_layer = 0;
  // Its row of q, sink_q, out and lse; -1: the entry's own index.
  int32_t row = -1;
};

ATTN_HD int32_t QueryRow(const DecodeSequence& s, int32_t entry) { return s.row >= 0 ? s.row : entry; }

// Entry `e`'s parameters in `layer`.
ATTN_HD const SequenceAttentionParams& LayerParams(const DecodeSequence& e, int32_t layer) {
  return e.layer_params != nullptr ? e.layer_params[layer] : e.params;
}

// Entry `e` as layer `layer` reads it: its keys and values there, that
// layer's parameters, Quest's ranges only where they apply.
ATTN_HD DecodeSequence AtLayer(const DecodeSequence& e, int32_t layer) {
  DecodeSequence s = e;
  s.kv = e.kv.AtLayer(layer);
  s.params = LayerParams(e, layer);
  s.layer_params = nullptr;
  if (layer < e.key_ranges_from_layer) s.key_ranges = nullptr;
  return s;
}

struct DecodeAttentionArgs {
  const DecodeSequence* seqs = nullptr;  // device, [n_seqs]
  int32_t n_seqs = 0;
  int32_t layer = 0;           // the entries are read AtLayer(layer)
  int32_t max_tokens = 0;      // >= query_pos + 1 of every sequence: sizes the split grid
  const float* q = nullptr;    // [rows][n_q_heads][head_dim], a row per entry (QueryRow)
  // Streaming positions=CACHE: the queries rotated at their cache slot, for
  // the keys below params.sink_tokens (layout of q). Null: q for every key.
  const float* sink_q = nullptr;
  int32_t n_q_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;        // 64 or 128
  float* out = nullptr;        // [rows][n_q_heads][head_dim]
  float* lse = nullptr;        // [rows][n_q_heads]: log of the softmax denominator; null: not written
};

inline constexpr int32_t kDecodeSplitKeys = 256;

// Query heads per KV head that the attention kernels (decode and prefill)
// take at most: the decode kernel gives each a warp of its block.
inline constexpr int kMaxQueryHeadsPerKvHead = 16;

// Device scratch the launch needs (the splits' partial results).
size_t DecodeAttentionWorkspaceBytes(int32_t n_seqs, int32_t n_q_heads, int32_t head_dim, int32_t max_tokens);

// INVALID_ARGUMENT for shapes the kernels do not cover (head_dim other than
// 64 or 128, more than 16 query heads per KV head) or a short workspace; a
// launch failure is the CUDA error.
absl::Status DecodeAttentionCuda(const DecodeAttentionArgs& args, void* workspace, size_t workspace_bytes,
                                 void* stream);

}  // namespace attnserve
