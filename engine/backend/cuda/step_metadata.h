// The host half of a GPU engine step: from the engine's SequenceSteps, the
// kernels' per-sequence and per-row structs, staged once for every layer in
// two StagingArenas at the device addresses they will have. Plain C++: it reads
// the page tables and plans, computes device addresses into the KV pool and
// the arenas, and dereferences none of them, so CPU tests can check it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/plan_store.h"
#include "engine/backend/cuda/staging_arena.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/linear_state.h"
#include "kernels/cuda/paged_decode.h"
#include "kernels/cuda/paged_prefill.h"
#include "kernels/cuda/quest_select.h"

namespace attnserve {

// The linear mode's work in one layer (device addresses): its pending keys
// follow each layer's own folds, so it is staged per layer.
struct LinearLayerWork {
  const LinearReadSequence* read = nullptr;  // [n_rows]
  int32_t n_rows = 0;
  const LinearFoldSequence* fold = nullptr;  // [n_folds]
  int32_t n_folds = 0;
};

struct StepMetadata {
  int64_t rows = 0;
  int32_t n_seqs = 0;
  const int32_t* tokens = nullptr;     // [rows]
  const int32_t* positions = nullptr;  // [rows]
  const int32_t* slots = nullptr;      // [rows]: RoPE positions for sink keys; null when no row needs them
  const int32_t* row_seq = nullptr;    // [rows]: the step index of each row
  // Rows whose logits are computed: those returned (kLast, kAll) in step
  // order, then those whose token the device picks (kLastPick, pick_steps).
  const int32_t* logit_rows = nullptr;  // [n_logit_rows]
  int64_t n_logit_rows = 0;
  int64_t n_pick_rows = 0;              // the last of logit_rows
  std::vector<int32_t> pick_steps;      // [n_pick_rows]: their steps
  const TokenPick* picks = nullptr;     // [n_pick_rows]: how to draw each
  int32_t max_tokens = 0;          // keys any query of the step may read
  // max_tokens rounded up to a power of two: the decode kernel's split grid
  // is sized by it, so that steps hundreds of tokens apart launch the same
  // grid (and replay one CUDA graph).
  int32_t decode_max_tokens = 0;
  int32_t max_blocks_per_seq = 0;  // KV blocks any sequence writes to
  bool wants_lse = false;          // linear and ACT prompt sequences need the log denominators
  std::vector<int32_t> first_row;  // [n_seqs]: each step's first row
  // Steps whose ACT key sets are still to be found (their prompt step): their
  // rows' entries carry the plan's parameters for the layers that need sets;
  // the backend finds the sets and runs those rows again (StageParams).
  std::vector<int32_t> act_prompt_steps;

  // The kernels' structs, staged once for every layer: their views are
  // layer 0's and each launch names its layer (AtLayer, PagedKv::AtLayer).
  const KvAppendSequence* append = nullptr;  // [n_seqs]
  const DecodeSequence* entries = nullptr;   // [rows]: row r's query (its row field r)
  // Queries for the decode kernel (single-token steps, and every query
  // Quest selects keys for in some layer): copies of their entries.
  const DecodeSequence* decode = nullptr;    // [n_decode]
  int32_t n_decode = 0;
  // The other queries of multi-token steps, in tiles over `entries`.
  const PrefillTile* tiles = nullptr;        // [n_tiles]
  int32_t n_tiles = 0;
  const QuestSelectSequence* quest = nullptr;  // [n_quest]
  const int32_t* quest_rows = nullptr;         // [n_quest]: their rows of q
  int32_t n_quest = 0;
  int32_t quest_first_layer = 0;  // the lowest first_layer of `quest`
  int32_t quest_max_pages = 0;    // pages of its rows' longest context, rounded up as decode_max_tokens
  std::vector<LinearLayerWork> linear;  // [n_layers]
  // The linear states' folded_end after the step, per step index and layer
  // (empty for sequences without linear state).
  std::vector<std::vector<int32_t>> folded_end;
};

// Where a step's metadata is staged. Kernel arguments point into `index`
// only: arrays whose sizes follow from the step's counts (rows, sequences,
// decode queries, ...), so that steps with the same counts put them at the
// same addresses, which a captured CUDA graph can replay. What those arrays
// point to (page tables, policy parameters, logit edits) varies with the
// sequences and goes to `data`; what kernels write for later ones (Quest's
// ranges) to `outputs`, which is never copied; the policies' parameters to
// `plans`, which keeps them on the device across steps. The caller Resets
// the first three and begins a step of `plans` at their device buffers'
// addresses before BuildStepMetadata, and copies the arenas and what
// `plans` appended up after.
struct StepStaging {
  StagingArena index;
  StagingArena data;
  DeviceScratch outputs;
  PlanStore plans;
};

// `linear_states[i]`: the device states of steps[i]'s linear sequence (its
// LinearAttentionState::device_states), null for the others. `pool` gives
// device addresses (on_device) or host ones (tests). Appends to both of
// `staging`'s arenas; the caller copies them up and applies folded_end once
// the step has run.
absl::StatusOr<StepMetadata> BuildStepMetadata(const ModelConfig& config, KvCachePool& pool,
                                               std::span<const SequenceStep> steps,
                                               std::span<float* const> linear_states,
                                               std::span<const AttentionHeadParams> dense_heads,
                                               StepStaging& staging);

// The power of two >= max(max_tokens, kDecodeSplitKeys) (max_tokens itself
// past 2^30).
int32_t DecodeTokensBound(int32_t max_tokens);

// Whether a step may run from a CUDA graph: every sequence decodes one
// token whose next token the device picks (no prefill tiles, whose count
// follows the chunks' lengths), and the host waits for nothing mid-step
// (ACT's prompt pass). Quest's selection is sized by decode_max_tokens, and
// the linear mode's reads and folds by the sequences, so both may.
bool GraphReplayable(const StepMetadata& m);

// Every count and index address the step's kernel launches take: two steps
// with equal signatures (and equal activation buffers) launch the same
// kernels with the same arguments, only the staged data differs.
std::vector<uintptr_t> LaunchSignature(const StepMetadata& m);

}  // namespace attnserve
