// The model-forward interface the engine drives, one implementation per
// device. A step is a batch of sequences, each contributing a run of tokens
// (a prefill chunk or one decode token); the backend appends their K/V to the
// paged cache and returns the logits the caller asked for.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/model_config.h"
#include "engine/backend/linear_attention_state.h"
#include "engine/policy/act_key_sets.h"
#include "engine/policy/attention_plan.h"
#include "kernels/common/token_pick.h"

namespace attnserve {

// kLastPick: the backend draws the last row's token itself, as
// SequenceStep::pick says (kernels/common/token_pick.h; greedy is ArgMax's
// choice, engine/sampling), and returns no row: a GPU sends back 4 bytes, not a vocabulary.
enum class LogitsWanted { kNone, kLast, kAll, kLastPick };

// One sequence's share of an engine step.
struct SequenceStep {
  const PageTable* pages = nullptr;  // reserved for positions < first_pos + tokens.size()
  std::span<const int32_t> tokens;
  int32_t first_pos = 0;             // position of tokens[0]; earlier K/V are cached
  LogitsWanted logits = LogitsWanted::kLast;
  // The sequence's attention policy; null is dense over the full cache.
  // Sequences of one step may each have their own.
  const AttentionPlan* attention = nullptr;
  // ACT's key sets of the sequence's request (attention->act()); while
  // incomplete, the step must start at 0 and cover the whole prompt, and
  // the backend finds them from its attention, layer by layer.
  ActKeySets* act_sets = nullptr;
  // The linear mode's folded keys (attention->linear()); a step from
  // position 0 starts them afresh.
  LinearAttentionState* linear = nullptr;
  TokenPick* pick = nullptr;  // kLastPick: how to draw; receives the token
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::string name() const = 0;  // "cpu", "cuda"
  virtual std::string device() const = 0;  // the processor's name, e.g. the CPU model or the GPU's
  // Whether the engine should hand it every token draw (kLastPick with the
  // sequence's sampling and logit processing): where the row would cross
  // PCIe. Greedy picks of unprocessed rows go to every backend.
  virtual bool picks_tokens() const { return false; }
  // Runs one step. `logits` receives vocab_size floats per wanted row, in the
  // order of `steps` (kLast: one row, kAll: one per token, kLastPick none).
  virtual absl::Status Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) = 0;

  // A linear sequence's state (LinearAttentionState), allocated where the
  // backend keeps it before the sequence's first step: a shortfall then
  // fails that request alone (RESOURCE_EXHAUSTED), not a step of many.
  // Forward allocates what is still missing.
  virtual absl::Status AllocateLinearState(LinearAttentionState& state) = 0;

  // Steps run from CUDA graphs since the start: replayed from a graph
  // captured before, and captured (then run); and the padding rows that
  // brought decode steps to a graph's batch size. Read on the engine thread.
  struct GraphCounts {
    int64_t replayed = 0;
    int64_t captured = 0;
    int64_t padding_rows = 0;
  };
  virtual GraphCounts graph_counts() const { return {}; }

  // OK while the backend can run steps; else why not, for good (a device
  // whose context a fault has spoiled): the process must be restarted.
  // Read on the engine thread, after a failed step.
  virtual absl::Status health() const { return absl::OkStatus(); }
};

// Streaming positions=CACHE: whether the step's queries also turn at their
// cache slot, for the sink keys (once its last query's slot is not its
// position).
inline bool NeedsSinkSlots(const SequenceStep& st) {
  if (st.attention == nullptr || !st.attention->cache_positions()) return false;
  const SequenceAttentionParams& p = st.attention->layer(0);
  const int32_t last = st.first_pos + static_cast<int32_t>(st.tokens.size()) - 1;
  return p.sink_tokens > 0 && CacheSlot(p, last) != last;
}

// Rows of logits a step computes: kAll one per token, kLast and kLastPick
// one, kNone none.
inline int64_t RowsOfLogits(const SequenceStep& st) {
  switch (st.logits) {
    case LogitsWanted::kAll:
      return static_cast<int64_t>(st.tokens.size());
    case LogitsWanted::kLast:
    case LogitsWanted::kLastPick:
      return 1;
    case LogitsWanted::kNone:
      break;
  }
  return 0;
}

// kLastPick's token on the host (the CPU backend, and the GPU kernel's
// reference): token_pick.h's rules, sums in id order; greedy is ArgMax.
int32_t PickToken(std::span<const float> row, const TokenPick& pick);
// Fills pick's logprob (of pick.token) and top tokens on the host, as the
// Sampler reports them (TokenLogprobs).
void PickLogprobs(std::span<const float> row, TokenPick& pick);

// The checks every backend makes of a step before running it: tokens in
// the vocabulary, positions reserved in the page tables, plans made for
// this model, ACT's and the linear mode's state consistent with the plan.
absl::Status CheckSteps(const ModelConfig& config, int32_t page_size, std::span<const SequenceStep> steps);

}  // namespace attnserve
