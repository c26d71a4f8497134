#include "engine/backend/cuda/plan_store.h"

#include <algorithm>

#include "engine/policy/act_key_sets.h"

namespace attnserve {
namespace {

// What a sequence's parameters are kept under: its key sets' once they are
// found (the plan's with the sets), else its plan's.
uint64_t ParamsId(const SequenceStep& st) { return st.act_sets != nullptr ? st.act_sets->id() : st.attention->id(); }

}  // namespace

SequenceAttentionParams StageParams(const SequenceAttentionParams& p, int32_t n_heads, StagingArena& arena) {
  SequenceAttentionParams d = p;
  d.heads = arena.Append(p.heads, n_heads);
  d.spans = p.num_spans > 0 ? arena.Append(p.spans, p.num_spans) : nullptr;
  int32_t reweight_keys = 0;
  for (int h = 0; h < n_heads; ++h) {
    reweight_keys = std::max(reweight_keys, p.heads[h].reweight_keys_begin + p.heads[h].reweight_keys_size);
  }
  d.reweight_keys = p.reweight_keys != nullptr ? arena.Append(p.reweight_keys, reweight_keys) : nullptr;
  return d;
}

void PlanStore::Clear() {
  arena_.Reset(base_);
  resident_.clear();
  upload_begin_ = uploaded_ = 0;
}

void PlanStore::BeginStep(void* device_base, size_t capacity) {
  this_step_.clear();
  if (device_base != base_ || uploaded_ != arena_.size()) {
    base_ = device_base;
    Clear();
  }
  capacity_ = capacity;
  upload_begin_ = arena_.size();
}

const PlanStore::Staged& PlanStore::Append(const ModelConfig& c, const SequenceStep& st, StagingArena& arena) {
  auto staged = std::make_unique<Staged>();
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const SequenceAttentionParams& p = st.act_sets != nullptr ? st.act_sets->layer(l) : st.attention->layer(l);
    staged->layers.push_back(StageParams(p, c.n_heads, arena));
  }
  staged->device = arena.Append(staged->layers);
  if (&arena != &arena_) return *this_step_.emplace_back(std::move(staged));
  return resident_.emplace(ParamsId(st), std::move(*staged)).first->second;
}

std::vector<const PlanStore::Staged*> PlanStore::Stage(const ModelConfig& c, std::span<const SequenceStep> steps,
                                                       StagingArena& data) {
  std::vector<const Staged*> staged(steps.size(), nullptr);
  for (int attempt = 0; attempt < 2; ++attempt) {
    for (size_t i = 0; i < steps.size(); ++i) {
      const SequenceStep& st = steps[i];
      if (st.attention == nullptr || (st.act_sets != nullptr && !st.act_sets->complete())) continue;
      const auto it = resident_.find(ParamsId(st));
      staged[i] = it != resident_.end() ? &it->second : &Append(c, st, arena_);
    }
    // Full: start over with this step's plans alone (the caller grows the
    // buffer if even they do not fit).
    if (arena_.size() <= capacity_ || upload_begin_ == 0) break;
    Clear();
  }
  // Key sets being found: this step's own, one staging per request.
  std::unordered_map<const ActKeySets*, const Staged*> finding;
  for (size_t i = 0; i < steps.size(); ++i) {
    const SequenceStep& st = steps[i];
    if (st.act_sets == nullptr || st.act_sets->complete()) continue;
    auto [it, inserted] = finding.try_emplace(st.act_sets, nullptr);
    if (inserted) it->second = &Append(c, st, data);
    staged[i] = it->second;
  }
  return staged;
}

}  // namespace attnserve
