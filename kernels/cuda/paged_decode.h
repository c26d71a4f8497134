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

// One sequence's decode query in one layer. Every pointer, including those
// inside kv and params, is a device pointer.
struct DecodeSequence {
  PagedKv kv;                       // keys at positions [0, query_pos] present
  SequenceAttentionParams params;   // heads: [n_q_heads]
  int32_t query_pos = 0;
  // Quest: per KV head g, only the keys in key_ranges[g * key_ranges_stride
  // + i], i < num_key_ranges[g] (sorted, disjoint) are read. Null: all of
  // the visible set.
  const KeyRange* key_ranges = nullptr;
  const int32_t* num_key_ranges = nullptr;
  int32_t key_ranges_stride = 0;
  // Its row of q, sink_q, out and lse; -1: the entry's own index.
  int32_t row = -1;
};

ATTN_HD int32_t QueryRow(const DecodeSequence& s, int32_t entry) { return s.row >= 0 ? s.row : entry; }

struct DecodeAttentionArgs {
  const DecodeSequence* seqs = nullptr;  // device, [n_seqs]
  int32_t n_seqs = 0;
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

// Device scratch the launch needs (the splits' partial results).
size_t DecodeAttentionWorkspaceBytes(int32_t n_seqs, int32_t n_q_heads, int32_t head_dim, int32_t max_tokens);

// INVALID_ARGUMENT for shapes the kernels do not cover (head_dim other than
// 64 or 128, more than 16 query heads per KV head) or a short workspace; a
// launch failure is the CUDA error.
absl::Status DecodeAttentionCuda(const DecodeAttentionArgs& args, void* workspace, size_t workspace_bytes,
                                 void* stream);

}  // namespace attnserve
