// Each policy's per-layer kernel parameters, kept in one device buffer
// across steps: a request's plan is staged and copied up once, not at every
// step (step_metadata_bench: 256 Llama-3-8B requests, four in five with a
// plan of their own, copied 7.8 MB a step, ~38 KB a plan). Plans are
// appended as their requests come; when the buffer is full it starts over
// with the step's own. ACT key sets still being found change during their
// step and go with the step's data instead. Plain C++, tested on the CPU.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cuda/staging_arena.h"

namespace attnserve {

// Stages `p` (its per-head parameters, spans and ACT key sets) for an
// SequenceAttentionParams with device pointers into `arena`.
SequenceAttentionParams StageParams(const SequenceAttentionParams& p, int32_t n_heads, StagingArena& arena);

class PlanStore {
 public:
  struct Staged {
    const SequenceAttentionParams* device = nullptr;  // [n_layers]
    std::vector<SequenceAttentionParams> layers;      // what lies there (device pointers)
  };

  // Starts a step on the device buffer at `device_base` of `capacity`
  // bytes. A moved buffer, or a step whose appended bytes were not
  // uploaded, drops everything.
  void BeginStep(void* device_base, size_t capacity);
  // Drops everything: the device buffer was freed (a new one may lie at
  // the same address).
  void Invalidate() {
    base_ = nullptr;
    Clear();
  }

  // The parameters of steps[i]'s plan (or key sets), null for dense
  // sequences: on the device already, appended to the store, or staged in
  // `data` (key sets being found). Valid until the next BeginStep.
  std::vector<const Staged*> Stage(const ModelConfig& c, std::span<const SequenceStep> steps, StagingArena& data);

  // The bytes the device buffer must hold; past its capacity, the caller
  // grows it and stages the step again.
  size_t size() const { return arena_.size(); }
  // Copy [upload_begin(), size()) of data() to the same offsets of the
  // buffer, then call Uploaded.
  size_t upload_begin() const { return upload_begin_; }
  const uint8_t* data() const { return arena_.data(); }
  void Uploaded() { uploaded_ = arena_.size(); }

 private:
  void Clear();
  const Staged& Append(const ModelConfig& c, const SequenceStep& st, StagingArena& arena);

  void* base_ = nullptr;
  size_t capacity_ = 0;
  StagingArena arena_;
  size_t upload_begin_ = 0, uploaded_ = 0;
  std::unordered_map<uint64_t, Staged> resident_;  // by plan or key-set id
  std::vector<std::unique_ptr<Staged>> this_step_;  // key sets being found
};

}  // namespace attnserve
