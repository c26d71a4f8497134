#include "engine/scheduler/scheduler.h"

#include <algorithm>

namespace attnserve {
namespace {

// Highest priority first, then first come, first served.
bool RunsBefore(const SchedSeq* a, const SchedSeq* b) {
  if (a->priority != b->priority) return a->priority > b->priority;
  return a->arrival_order < b->arrival_order;
}

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config, PageAllocator& allocator, PrefixCache& prefix_cache)
    : config_(config), allocator_(allocator), prefix_cache_(prefix_cache) {}

void Scheduler::AddWaiting(SchedSeq* seq) {
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), seq, RunsBefore), seq);
}

void Scheduler::Remove(SchedSeq* seq) {
  std::erase(running_, seq);
  std::erase(waiting_, seq);
  ReleasePages(seq->pages, allocator_);
}

int32_t Scheduler::pages_in_use() const {
  int32_t n = 0;
  for (const SchedSeq* s : running_) n += HeldPages(s->pages);
  for (const SchedSeq* s : waiting_) n += HeldPages(s->pages);
  return n;
}

int32_t Scheduler::ChunkSize(const SchedSeq& seq, int32_t budget) const {
  int32_t n = std::min(static_cast<int32_t>(seq.tokens.size()) - seq.num_computed, budget);
  if (seq.max_chunk > 0) n = std::min(n, seq.max_chunk);
  if (seq.num_computed == 0 && seq.min_first_chunk > 0) {
    n = std::max(n, std::min(static_cast<int32_t>(seq.tokens.size()), seq.min_first_chunk));
  }
  return n;
}

bool Scheduler::Reserve(SchedSeq& seq, int32_t num_tokens) {
  const size_t needed = PagesNeeded(seq.pages, num_tokens, seq.num_computed, config_.page_size);
  const size_t had = seq.pages.pages.size();
  bool ok = true;
  while (ok && seq.pages.pages.size() < needed) {
    absl::StatusOr<int32_t> page = prefix_cache_.Allocate();
    ok = page.ok();
    if (ok) seq.pages.pages.push_back(*page);
  }
  // A table packed by head hands its new blocks slices of those pages; that
  // cannot fail once PagesNeeded pages are held.
  ok = ok && AssignSlices(seq.pages, num_tokens, config_.page_size).ok();
  if (!ok) {  // all or nothing
    while (seq.pages.pages.size() > had) {
      allocator_.Release(seq.pages.pages.back());
      seq.pages.pages.pop_back();
    }
  }
  return ok;
}

void Scheduler::Preempt(SchedSeq* seq, ScheduleOutput& out) {
  std::erase(running_, seq);
  ReleasePages(seq->pages, allocator_);
  seq->num_computed = 0;
  ++seq->num_preemptions;
  AddWaiting(seq);
  out.preempted.push_back(seq);
}

ScheduleOutput Scheduler::Schedule() {
  ScheduleOutput out;
  int32_t budget = config_.max_num_batched_tokens;
  std::sort(running_.begin(), running_.end(), RunsBefore);
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    SchedSeq* seq = running_[i];
    const int32_t n = ChunkSize(*seq, budget);
    if (n <= 0) {
      ++i;
      continue;
    }
    bool preempted_self = false;
    while (!Reserve(*seq, seq->num_computed + n)) {
      if (running_.size() == 1) {  // alone and still no room: the engine ends it
        running_.clear();
        out.out_of_memory.push_back(seq);
        preempted_self = true;
        break;
      }
      SchedSeq* victim = running_.back();
      Preempt(victim, out);
      if (victim == seq) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) continue;  // running_[i] is now the next sequence, if any
    out.chunks.push_back({seq, n});
    budget -= n;
    ++i;
  }
  // Admit waiting sequences only when nothing had to be preempted: a
  // preempted sequence would otherwise be readmitted at once and thrash.
  if (!out.preempted.empty() || !out.out_of_memory.empty()) return out;
  while (!waiting_.empty() && budget > 0 && static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
    SchedSeq* seq = waiting_.front();
    const int32_t total = static_cast<int32_t>(seq->tokens.size());
    if (seq->num_computed == 0 && seq->use_prefix_cache) {
      // At least one token must run to produce logits.
      const int32_t max_pages = (total - 1) / config_.page_size;
      seq->pages.pages = prefix_cache_.Lookup(seq->tokens, seq->cache_salt, max_pages);
      seq->num_computed = static_cast<int32_t>(seq->pages.pages.size()) * config_.page_size;
      seq->pages.num_tokens = seq->num_computed;
      out.prefix_cache_queried_tokens += total;
      out.prefix_cache_hit_tokens += seq->num_computed;
    }
    const int32_t n = ChunkSize(*seq, budget);
    if (!Reserve(*seq, seq->num_computed + n)) {
      ReleasePages(seq->pages, allocator_);
      seq->num_computed = 0;
      break;
    }
    if (seq->num_preemptions == 0) seq->cached_tokens = std::max(seq->cached_tokens, seq->num_computed);
    waiting_.erase(waiting_.begin());
    running_.push_back(seq);
    out.admitted.push_back(seq);
    out.chunks.push_back({seq, n});
    budget -= n;
  }
  return out;
}

}  // namespace attnserve
