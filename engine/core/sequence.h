// Engine-internal state of requests and their sequences (engine thread only).
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "engine/core/engine.h"
#include "engine/core/output_stream.h"
#include "engine/backend/linear_attention_state.h"
#include "engine/core/request.h"
#include "engine/policy/act_key_sets.h"
#include "engine/sampling/logits_processor.h"
#include "engine/sampling/stop_checker.h"
#include "engine/scheduler/scheduler.h"

namespace attnserve {

struct RequestState;

// One completion of a request.
struct Sequence : SchedSeq {
  RequestState* request = nullptr;
  int32_t index = 0;
  int32_t num_prompt = 0;
  std::optional<SequenceSampler> sampler;  // absent for scoring
  TokenPick pick;                          // the backend's draw (LogitsWanted::kLastPick)
  std::vector<LogitEdit> pick_edits;       // its logit processing
  std::unique_ptr<LinearAttentionState> linear;  // the linear mode's folded keys
  std::optional<StopChecker> stop;
  GenerationDelta pending;                  // produced this step, not yet pushed
  int32_t generated = 0;
  bool scheduled = false;                   // handed to the scheduler
  bool finished = false;
  absl::Time last_token_time;
};

struct RequestState {
  uint64_t handle = 0;
  GenerationRequest request;
  std::shared_ptr<OutputStream> out;  // null for scoring
  std::vector<std::unique_ptr<Sequence>> seqs;
  // ACT's key sets, shared by the completions (one prompt, one S).
  std::unique_ptr<ActKeySets> act_sets;
  int32_t unfinished = 0;
  std::optional<absl::Time> first_scheduled;
  std::optional<absl::Time> first_token;
  // Scoring: logprobs of every token, and where the result goes.
  bool score = false;
  std::vector<float> token_logprobs;
  std::promise<absl::StatusOr<ScoreResult>> score_result;
};

}  // namespace attnserve
