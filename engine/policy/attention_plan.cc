#include "engine/policy/attention_plan.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <utility>

#include "engine/common/hash.h"

namespace attnserve {
namespace {

class Hasher {
 public:
  void Add(uint64_t v) { h_ = Mix64(h_ ^ v); }
  void Add(int32_t v) { Add(static_cast<uint64_t>(static_cast<uint32_t>(v))); }
  // -0 and +0 compute the same, so they hash the same.
  void Add(float v) { Add(static_cast<uint64_t>(std::bit_cast<uint32_t>(v + 0.0f))); }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0x6174746e706c616eull;
};

bool SameHead(const AttentionHeadParams& a, const AttentionHeadParams& b) {
  return a.logit_scale == b.logit_scale && a.first_token_bias == b.first_token_bias &&
         a.outside_span_bias == b.outside_span_bias && a.virtual_sink_logit == b.virtual_sink_logit &&
         a.reweight_beta == b.reweight_beta && a.reweight_keys_size == b.reweight_keys_size &&
         a.sink_tokens == b.sink_tokens && a.window_tokens == b.window_tokens;
}

}  // namespace

uint64_t NewPolicyObjectId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

AttentionPlan::AttentionPlan(AttentionPlanContents contents) : c_(std::move(contents)) {
  layers_.resize(c_.n_layers);
  for (int32_t l = 0; l < c_.n_layers; ++l) {
    SequenceAttentionParams& p = layers_[l];
    p.heads = c_.heads.data() + static_cast<size_t>(l) * c_.n_heads;
    p.sink_tokens = c_.visible.sink_tokens;
    p.window_tokens = c_.visible.window_tokens;
    p.spans = c_.spans.data();
    p.num_spans = static_cast<int32_t>(c_.spans.size());
    p.prompt_tokens = c_.prompt_tokens;
  }
  // The kernel's rule (attention.cc): a group reads the sequence's set,
  // unless every head of it has its own window.
  const int32_t group = c_.n_kv_heads > 0 ? c_.n_heads / c_.n_kv_heads : 0;
  group_reads_.assign(static_cast<size_t>(c_.n_layers) * c_.n_kv_heads, c_.visible);
  for (int32_t l = 0; l < c_.n_layers && c_.visible.keeps_everything(); ++l) {
    for (int32_t g = 0; g < c_.n_kv_heads; ++g) {
      VisibleSet widest;
      bool all_windowed = true;
      for (int32_t h = g * group; h < (g + 1) * group; ++h) {
        const AttentionHeadParams& p = head(l, h);
        all_windowed &= p.window_tokens > 0;
        widest.sink_tokens = std::max(widest.sink_tokens, p.sink_tokens);
        widest.window_tokens = std::max(widest.window_tokens, p.window_tokens);
      }
      if (!all_windowed) continue;
      group_reads_[static_cast<size_t>(l) * c_.n_kv_heads + g] = widest;
      windowed_kv_heads_.push_back(l * c_.n_kv_heads + g);
      kv_head_window_.sink_tokens = std::max(kv_head_window_.sink_tokens, widest.sink_tokens);
      kv_head_window_.window_tokens = std::max(kv_head_window_.window_tokens, widest.window_tokens);
    }
  }
  signature_ = ComputeSignature();
}

int64_t AttentionPlan::PagesRead(int32_t first_query, int32_t last_query, int32_t page_size) const {
  int64_t pages = 0;
  for (size_t i = 0; i < group_reads_.size(); ++i) {
    const int64_t read = group_reads_[i].PagesRead(first_query, last_query, page_size);
    // A lone decode query under Quest: the budget's pages and its own.
    const bool quest_decode = first_query == last_query && quest(static_cast<int32_t>(i) / c_.n_kv_heads, last_query);
    pages += quest_decode ? std::min<int64_t>(read, c_.quest_token_budget / page_size + 1) : read;
  }
  return pages;
}

uint64_t AttentionPlan::ComputeSignature() const {
  bool dense = c_.visible.keeps_everything();
  bool any_span_bias = false;
  for (const AttentionHeadParams& h : c_.heads) {
    dense &= SameHead(h, c_.dense_head);
    any_span_bias |= h.outside_span_bias != 0.0f;
  }
  if (dense) return 0;
  Hasher hash;
  hash.Add(c_.n_layers);
  hash.Add(c_.n_heads);
  hash.Add(c_.visible.sink_tokens);
  hash.Add(c_.visible.window_tokens);
  hash.Add(static_cast<int32_t>(c_.cache_positions));
  hash.Add(c_.act_tau);
  hash.Add(static_cast<int32_t>(c_.linear));
  for (const AttentionHeadParams& h : c_.heads) {
    hash.Add(h.logit_scale);
    hash.Add(h.first_token_bias);
    hash.Add(h.outside_span_bias);
    hash.Add(h.virtual_sink_logit);
    hash.Add(h.reweight_beta);
    hash.Add(h.sink_tokens);
    hash.Add(h.window_tokens);
  }
  // Spans and the prompt's length matter only to heads that emphasise.
  if (any_span_bias) {
    hash.Add(c_.prompt_tokens);
    for (const KeyRange& s : c_.spans) {
      hash.Add(s.begin);
      hash.Add(s.end);
    }
  }
  // 0 is reserved for dense.
  return hash.value() == 0 ? 1 : hash.value();
}

int32_t SequenceTokenLimit(const AttentionPlan* plan, int32_t context_length) {
  return plan != nullptr && plan->cache_positions() ? kMaxStreamingSequenceTokens : context_length;
}

}  // namespace attnserve
