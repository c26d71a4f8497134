// Quest's page selection on the CPU (DESIGN.md §4, sparse): which keys one
// decode query reads for one KV head.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/common/attention_hooks.h"
#include "kernels/cpu/attention.h"

namespace attnserve {

// scores[i] = QuestPageScore (kernels/common/quest.h) of page pages[i] for
// KV head kv_head, from the bounds kv.key_min and kv.key_max; the lanes
// summed in another order than the scalar function's.
void QuestScores(const float* q_group, int group, const PagedKv& kv, int kv_head, const int32_t* pages, int32_t n,
                 float* scores);

// The keys the query at `pos` reads for KV head `kv_head`: the budget_pages
// pages before its own page with the highest QuestPageScore (ties to the
// earlier page), among the pages holding a key visible under
// (sink_tokens, window_tokens), then its own page; merged into sorted
// ranges that end at pos + 1. q_group: the group's queries after RoPE,
// [group][head_dim]. Returns false, with `ranges` empty, when every
// candidate fits in the budget: the query reads what dense attention reads.
bool SelectQuestPages(const float* q_group, int group, const PagedKv& kv, int kv_head, int32_t sink_tokens,
                      int32_t window_tokens, int32_t pos, int32_t budget_pages, std::vector<KeyRange>& ranges);

}  // namespace attnserve
