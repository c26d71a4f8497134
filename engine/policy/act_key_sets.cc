#include "engine/policy/act_key_sets.h"

#include <algorithm>

namespace attnserve {
namespace {

// How many of the prompt's queries i in [key, prompt) see `key` under the
// head's visible-set rule (HeadKeyVisible): a sink, or every key of a rule
// without a window, is seen by all later queries; a window key by the next
// window_tokens queries.
int32_t QueriesSeeing(const SequenceAttentionParams& p, const AttentionHeadParams& h, int32_t key, int32_t prompt) {
  int32_t n = prompt - key;
  if (p.window_tokens > 0 && key >= p.sink_tokens) n = std::min(n, p.window_tokens);
  if (h.window_tokens > 0 && key >= h.sink_tokens) n = std::min(n, h.window_tokens);
  return n;
}

}  // namespace

ActKeySets::ActKeySets(const AttentionPlan& plan)
    : plan_(plan), keys_(plan.n_layers()), layers_(plan.n_layers()), needed_(plan.n_layers(), false) {
  heads_.reserve(static_cast<size_t>(plan.n_layers()) * plan.n_heads());
  for (int32_t l = 0; l < plan.n_layers(); ++l) {
    layers_[l] = plan.layer(l);
    for (int32_t h = 0; h < plan.n_heads(); ++h) {
      heads_.push_back(plan.head(l, h));
      if (plan.head(l, h).reweight_beta != 1.0f) needed_[l] = true;
    }
    layers_[l].heads = heads_.data() + static_cast<size_t>(l) * plan.n_heads();
    missing_ += needed_[l] ? 1 : 0;
  }
}

void ActKeySets::SetFromColumnMass(int32_t layer, std::span<const double> mass) {
  if (!needed_[layer]) return;
  const int32_t prompt = plan_.prompt_tokens();
  const SequenceAttentionParams& params = plan_.layer(layer);
  std::vector<int32_t>& keys = keys_[layer];
  keys.clear();
  for (int32_t h = 0; h < plan_.n_heads(); ++h) {
    AttentionHeadParams& head = heads_[static_cast<size_t>(layer) * plan_.n_heads() + h];
    head.reweight_keys_begin = static_cast<int32_t>(keys.size());
    if (head.reweight_beta == 1.0f) continue;
    bool first = true;
    for (int32_t j = 0; j < prompt; ++j) {
      const int32_t seen_by = QueriesSeeing(params, head, j, prompt);
      if (mass[static_cast<size_t>(h) * prompt + j] <= plan_.act_tau() * seen_by) continue;
      if (first) {  // the real sink keeps its attention
        first = false;
        continue;
      }
      keys.push_back(j);
    }
    head.reweight_keys_size = static_cast<int32_t>(keys.size()) - head.reweight_keys_begin;
  }
  layers_[layer].reweight_keys = keys.data();
  needed_[layer] = false;
  --missing_;
}

std::span<const int32_t> ActKeySets::set(int32_t layer, int32_t head) const {
  const AttentionHeadParams& h = heads_[static_cast<size_t>(layer) * plan_.n_heads() + head];
  if (h.reweight_keys_size == 0) return {};
  return std::span<const int32_t>(keys_[layer]).subspan(h.reweight_keys_begin, h.reweight_keys_size);
}

}  // namespace attnserve
