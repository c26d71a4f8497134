// Helpers of the tests that run the serving engine on the real default model.
#pragma once

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"

namespace attnserve {

inline std::string ModelPath() {
  const char* root = std::getenv("ATTNSERVE_SOURCE_DIR");
  return std::string(root ? root : ".") + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Collects a request's deltas until its stream closes.
struct Collector {
  Collector() : stream(std::make_shared<OutputStream>(nullptr)) {}
  std::vector<GenerationDelta> Wait() {
    std::vector<GenerationDelta> merged;
    for (;;) {
      // Everything pushed before the stream closed is visible to this Take.
      const bool closed = stream->closed();
      for (GenerationDelta& d : stream->Take()) {
        if (merged.size() <= static_cast<size_t>(d.index)) merged.resize(d.index + 1);
        GenerationDelta& m = merged[d.index];
        m.index = d.index;
        m.token_ids.insert(m.token_ids.end(), d.token_ids.begin(), d.token_ids.end());
        m.text += d.text;
        m.logprobs.insert(m.logprobs.end(), d.logprobs.begin(), d.logprobs.end());
        if (d.finish_reason != FinishReason::kNone || !d.error.ok()) {
          m.finish_reason = d.finish_reason;
          m.error = d.error;
          m.prompt_tokens = d.prompt_tokens;
          m.completion_tokens = d.completion_tokens;
          m.cached_prompt_tokens = d.cached_prompt_tokens;
        }
      }
      if (closed) return merged;
      absl::SleepFor(absl::Milliseconds(1));
    }
  }
  std::shared_ptr<OutputStream> stream;
};

inline std::vector<int32_t> RunAlone(Engine& engine, GenerationRequest r) {
  Collector c;
  EXPECT_TRUE(engine.Submit(std::move(r), c.stream).ok());
  return c.Wait()[0].token_ids;
}

// Greedy output after a preemption is recomputed by batched prefill, whose
// attention rounds differently from single-query decode (as llama.cpp's
// does), so a continuation may take the other branch of a near-tie. `want`
// must carry top-2 logprobs; the tokens must agree up to a divergence where
// its top-2 margin is below max_margin nats.
inline void ExpectSameOrNearTie(const std::vector<int32_t>& got, const GenerationDelta& want, float max_margin,
                                const std::string& what) {
  ASSERT_EQ(got.size(), want.token_ids.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want.token_ids[i]) continue;
    ASSERT_LT(i, want.logprobs.size()) << what;
    ASSERT_GE(want.logprobs[i].top.size(), 2u) << what;
    const float margin = want.logprobs[i].top[0].logprob - want.logprobs[i].top[1].logprob;
    EXPECT_LT(margin, max_margin) << what << ": diverges at token " << i << " where the margin is " << margin;
    return;
  }
}

}  // namespace attnserve
