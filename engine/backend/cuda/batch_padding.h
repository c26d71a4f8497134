// Decode steps run at a few batch sizes only (1, 2, 4, then multiples of 8,
// as vLLM captures its graphs), so that a handful of CUDA graphs serve
// every batch the scheduler forms: a step of 13 sequences runs with 3
// padding sequences as one of 16. Plain C++, tested on every machine.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/kv/kv_cache.h"

namespace attnserve {

// The batch size a decode step of n_seqs sequences runs at.
int32_t PaddedBatchSize(int32_t n_seqs);
// Padding sequences a step needs at most (PaddedBatchSize(n) - n).
inline constexpr int32_t kMaxBatchPadding = 7;

// Whether `steps` is padded: every sequence decodes one token that the
// device picks (or wants no logits) and no ACT prompt pass waits on the
// host, as GraphReplayable asks of the step's metadata.
bool PadsBatch(std::span<const SequenceStep> steps);

// The padding sequences: padding sequence i decodes token 0 at position 0,
// dense, into scratch page i of the pool, which no sequence reads, and its
// greedy pick is left in storage of its own. Its rows cost a decode row
// each and change nothing of the others' (every kernel keeps rows apart).
class BatchPadding {
 public:
  explicit BatchPadding(const KvCachePool& pool);

  // `steps`, followed by padding up to PaddedBatchSize when PadsBatch and
  // the pool has the scratch pages; valid until the next call.
  std::span<const SequenceStep> Pad(std::span<const SequenceStep> steps);

 private:
  std::vector<PageTable> tables_;  // [scratch pages]: one scratch page each
  std::vector<TokenPick> picks_;   // [scratch pages]
  std::vector<SequenceStep> padded_;
};

}  // namespace attnserve
