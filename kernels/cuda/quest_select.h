// Quest's page selection on the GPU (DESIGN.md §4, sparse), what
// SelectQuestPages does on the CPU: per sequence and KV head, score the
// candidate pages before the query's own (QuestPageScore over the group's
// queries, from the pages' key bounds), keep the budget's best (ties to the
// earlier page) and the own page, and write them as sorted key ranges that
// DecodeAttentionCuda reads (DecodeSequence::key_ranges). When every
// candidate fits in the budget the ranges are one, [0, query_pos + 1): the
// query reads what dense attention reads. Asynchronous; nothing allocates.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/common/attention_hooks.h"
#include "kernels/common/paged_kv.h"

namespace attnserve {

// Device pointers. kv's key bounds are read.
struct QuestSelectSequence {
  PagedKv kv;                 // layer 0's view: the launch's layer is read (PagedKv::AtLayer)
  int32_t first_layer = 0;    // layers below select nothing (their query reads every visible key)
  int32_t query_pos = 0;
  int32_t sink_tokens = 0;    // the visible-set rule: pages hidden from the query are no candidates
  int32_t window_tokens = 0;
  int32_t budget_pages = 0;   // >= 1
  KeyRange* key_ranges = nullptr;   // out, [n_kv_heads][budget_pages + 1]
  int32_t* num_key_ranges = nullptr;  // out, [n_kv_heads]
};

struct QuestSelectArgs {
  const QuestSelectSequence* seqs = nullptr;  // device, [n_seqs]
  int32_t n_seqs = 0;
  int32_t layer = 0;
  int32_t max_pages = 0;        // >= query_pos / page_size of every sequence
  const float* q = nullptr;     // device, [n_seqs][n_q_heads][head_dim], after RoPE, unscaled
  int32_t n_q_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
};

size_t QuestSelectWorkspaceBytes(int32_t n_seqs, int32_t n_kv_heads, int32_t max_pages);

absl::Status QuestSelectCuda(const QuestSelectArgs& args, void* workspace, size_t workspace_bytes, void* stream);

}  // namespace attnserve
