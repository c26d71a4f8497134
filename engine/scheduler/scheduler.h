// Continuous batching with chunked prefill, priorities and preemption.
//
// The scheduler sees budgets and sequences, never tensors: each step it
// picks which sequences advance by how many tokens, within a token budget
// and the KV pages available, and reserves those pages. Running sequences
// go first (decodes and unfinished prefills), by priority then arrival; when
// pages run out the lowest-priority, latest-arrived running sequence is
// preempted (its pages are released and it is recomputed later). Waiting
// sequences are admitted in the same order while budget and pages last.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/kv/kv_cache.h"
#include "engine/kv/prefix_cache.h"

namespace attnserve {

// The scheduler's view of a sequence; the engine's sequence extends it.
struct SchedSeq {
  int32_t priority = 0;
  uint64_t arrival_order = 0;       // FIFO within a priority
  std::vector<int32_t> tokens;      // prompt, then generated tokens
  int32_t num_computed = 0;         // tokens whose K/V are in `pages`
  PageTable pages;
  int32_t max_chunk = 0;            // tokens per step at most; 0 = no limit
  // When > 0, a chunk that starts at token 0 covers at least this many
  // tokens, over max_chunk and the step's token budget (ACT prefills its
  // whole prompt at once).
  int32_t min_first_chunk = 0;
  bool use_prefix_cache = true;
  uint64_t cache_salt = 0;          // see PrefixCache
  int32_t cached_tokens = 0;        // K/V found in the prefix cache at admission
  int32_t num_preemptions = 0;
};

struct ScheduledChunk {
  SchedSeq* seq;
  int32_t num_tokens;  // tokens [seq->num_computed, + num_tokens) run this step
};

struct ScheduleOutput {
  std::vector<ScheduledChunk> chunks;
  std::vector<SchedSeq*> preempted;   // moved back to waiting this step
  std::vector<SchedSeq*> admitted;    // moved from waiting to running this step
  // Running alone, it still cannot get a page: the cache is too small for it.
  std::vector<SchedSeq*> out_of_memory;
  int32_t prefix_cache_queried_tokens = 0;
  int32_t prefix_cache_hit_tokens = 0;
};

struct SchedulerConfig {
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 512;
  int32_t page_size = 16;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, PageAllocator& allocator, PrefixCache& prefix_cache);

  void AddWaiting(SchedSeq* seq);
  // Drops a sequence wherever it is and releases its pages.
  void Remove(SchedSeq* seq);
  ScheduleOutput Schedule();

  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  // Pages held by sequences, cached-only pages excluded.
  int32_t pages_in_use() const;

 private:
  bool Reserve(SchedSeq& seq, int32_t num_tokens);
  void Preempt(SchedSeq* seq, ScheduleOutput& out);
  int32_t ChunkSize(const SchedSeq& seq, int32_t budget) const;

  SchedulerConfig config_;
  PageAllocator& allocator_;
  PrefixCache& prefix_cache_;
  std::vector<SchedSeq*> running_;
  std::vector<SchedSeq*> waiting_;  // kept sorted: highest priority, earliest arrival first
};

}  // namespace attnserve
