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

}  // namespace attnserve
