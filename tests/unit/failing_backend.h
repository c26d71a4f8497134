// A backend that fails for good (a GPU whose context a fault spoiled), for
// the tests of what the engine and the server do then.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/model.h"

namespace attnserve {

// The CPU backend, until its `fail_at`-th step fails and leaves it unhealthy.
class FailingBackend : public Backend {
 public:
  FailingBackend(std::unique_ptr<Backend> inner, int fail_at) : inner_(std::move(inner)), fail_at_(fail_at) {}

  const ModelConfig& config() const override { return inner_->config(); }
  std::string name() const override { return inner_->name(); }
  std::string device() const override { return inner_->device(); }
  absl::Status AllocateLinearState(LinearAttentionState& state) override { return inner_->AllocateLinearState(state); }
  absl::Status health() const override { return health_; }

  absl::Status Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) override {
    if (++steps_ < fail_at_) return inner_->Forward(steps, logits);
    health_ = absl::UnavailableError("the device can run no more steps");
    return absl::InternalError("an illegal memory access was encountered");
  }

 private:
  std::unique_ptr<Backend> inner_;
  const int fail_at_;
  int steps_ = 0;
  absl::Status health_;
};

// For Engine::CreateWithBackend: the CPU backend, failing for good at its
// `fail_at`-th step.
inline auto FailingCpuBackend(int fail_at) {
  return [fail_at](const Model& m, KvCachePool& pool) -> absl::StatusOr<std::unique_ptr<Backend>> {
    return std::make_unique<FailingBackend>(CpuBackend::Create(m, pool, CpuBackendOptions{}).value(), fail_at);
  };
}

}  // namespace attnserve
