// The fixture of the tests of a GPU step's host half: a small model's
// config, a host KV pool (with the scratch pages padding rows write) and
// BuildStepMetadata staged at host "device" buffers, then copied there, so
// that the structs' pointers can be followed.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "engine/backend/cuda/batch_padding.h"
#include "engine/backend/cuda/step_metadata.h"
#include "engine/policy/planner.h"

namespace attnserve {

inline ModelConfig TinyConfig() {
  ModelConfig c;
  c.architecture = "llama";
  c.n_layers = 2;
  c.hidden = 256;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.ffn_hidden = 512;
  c.vocab_size = 100;
  c.context_length = 4096;
  c.rope_dim = 64;
  return c;
}

inline std::shared_ptr<const AttentionPlan> Plan(const PolicySpec& spec, const ModelConfig& c, int32_t prompt) {
  PromptInfo info;
  info.num_tokens = prompt;
  absl::StatusOr<std::shared_ptr<const AttentionPlan>> plan = PlanAttention(spec, c, info);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : nullptr;
}

inline PageTable Table(std::vector<int32_t> pages, int32_t tokens) {
  PageTable t;
  t.pages = std::move(pages);
  t.num_tokens = tokens;
  return t;
}

class StepMetadataFixture : public ::testing::Test {
 protected:
  static constexpr int32_t kPages = 16;

  StepMetadataFixture()
      : c_(TinyConfig()),
        pool_(KvCachePool::Create({c_.n_layers, c_.n_kv_heads, c_.head_dim, 16}, kPages, HostMemory(), false,
                                  kMaxBatchPadding)
                  .value()) {
    AttentionHeadParams dense;
    dense.logit_scale = 0.125f;
    dense_heads_.assign(c_.n_heads, dense);
  }

  static KvCachePool::Allocator HostMemory() {
    return [](size_t elements) -> absl::StatusOr<std::shared_ptr<fp16_t>> {
      return std::shared_ptr<fp16_t>(new fp16_t[elements](), std::default_delete<fp16_t[]>());
    };
  }

  // Builds, then copies the staged bytes to the buffers they were laid out for.
  StepMetadata Build(std::span<const SequenceStep> steps, std::span<float* const> linear_states) {
    staging_.index.Reset(index_.data());
    staging_.data.Reset(data_.data());
    staging_.outputs.Reset(outputs_.data());
    staging_.plans.BeginStep(plans_.data(), plans_.size());
    absl::StatusOr<StepMetadata> m = BuildStepMetadata(c_, pool_, steps, linear_states, dense_heads_, staging_);
    EXPECT_TRUE(m.ok()) << m.status();
    EXPECT_LE(staging_.index.size(), index_.size());
    EXPECT_LE(staging_.data.size(), data_.size());
    EXPECT_LE(staging_.outputs.size(), outputs_.size());
    EXPECT_LE(staging_.plans.size(), plans_.size());
    std::memcpy(index_.data(), staging_.index.data(), staging_.index.size());
    std::memcpy(data_.data(), staging_.data.data(), staging_.data.size());
    const size_t new_plans = staging_.plans.upload_begin();
    std::memcpy(plans_.data() + new_plans, staging_.plans.data() + new_plans, staging_.plans.size() - new_plans);
    staging_.plans.Uploaded();
    return m.ok() ? *std::move(m) : StepMetadata{};
  }
  StepMetadata Build(std::span<const SequenceStep> steps) {
    return Build(steps, std::vector<float*>(steps.size(), nullptr));
  }

  ModelConfig c_;
  KvCachePool pool_;
  std::vector<AttentionHeadParams> dense_heads_;
  StepStaging staging_;
  alignas(64) std::array<uint8_t, 1 << 20> index_{};
  alignas(64) std::array<uint8_t, 1 << 20> data_{};
  alignas(64) std::array<uint8_t, 1 << 16> outputs_{};
  alignas(64) std::array<uint8_t, 1 << 20> plans_{};
};

}  // namespace attnserve
