// The linear mode's states in the engine: allocated when a sequence is
// first scheduled, within --linear-state-memory, sequences without room
// parked until a state is freed.
#include <algorithm>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/engine_impl.h"

namespace attnserve {

// A linear sequence's state is allocated when the sequence is first
// scheduled, not while it waits. Where it finds no room (the engine's
// linear_state_bytes, or the backend's memory) while other states are
// held, the sequence leaves the scheduler (parked_linear) until one of them
// is freed; where none is held, or the state is larger than the whole
// budget, its request fails alone. Either way its chunk leaves the step.
void Engine::Impl::AllocateLinearStates(ScheduleOutput& schedule) {
  const int64_t budget = options.linear_state_bytes;
  // Counted at the first state to allocate: most steps have none.
  int64_t held = -1;
  std::vector<std::pair<RequestState*, absl::Status>> failed;
  std::vector<Sequence*> parked;
  for (const ScheduledChunk& c : schedule.chunks) {
    Sequence& seq = static_cast<Sequence&>(*c.seq);
    if (!seq.linear || seq.linear->allocated()) continue;
    if (held < 0) held = LinearStateBytesHeld();
    const int64_t bytes = seq.linear->bytes();
    absl::Status s = absl::OkStatus();
    if (budget > 0 && held + bytes > budget) {
      s = absl::ResourceExhaustedError(absl::StrCat("attention.linear: the sequence's state needs ", bytes,
                                                    " bytes; ", held, " of the ", budget,
                                                    " bytes of --linear-state-memory are held"));
    } else {
      s = backend->AllocateLinearState(*seq.linear);
    }
    if (s.ok()) {
      held += bytes;
    } else if (held > 0 && (budget == 0 || bytes <= budget)) {
      parked.push_back(&seq);
    } else {
      failed.emplace_back(seq.request, std::move(s));
    }
  }
  if (failed.empty() && parked.empty()) return;
  // Dropped from the step before FailRequest destroys the sequences.
  std::erase_if(schedule.chunks, [&](const ScheduledChunk& c) {
    const Sequence* seq = static_cast<Sequence*>(c.seq);
    return std::find(parked.begin(), parked.end(), seq) != parked.end() ||
           std::any_of(failed.begin(), failed.end(), [&](const auto& f) { return f.first == seq->request; });
  });
  for (Sequence* seq : parked) {
    scheduler.Remove(seq);  // its pages back; it stays `scheduled`, to return
    seq->num_computed = 0;
    ++seq->num_preemptions;
    parked_linear.emplace_back(seq, held);
    schedule.preempted.push_back(seq);
  }
  for (size_t i = 0; i < failed.size(); ++i) {
    const bool first = std::none_of(failed.begin(), failed.begin() + i,
                                    [&](const auto& f) { return f.first == failed[i].first; });
    if (first) FailRequest(*failed[i].first, failed[i].second);
  }
}

// Parked sequences go back to waiting once a state they waited on is freed
// (or none is held), in their first order.
void Engine::Impl::UnparkLinear() {
  if (parked_linear.empty()) return;
  const int64_t held = LinearStateBytesHeld();
  std::erase_if(parked_linear, [&](const std::pair<Sequence*, int64_t>& p) {
    if (held > 0 && held >= p.second) return false;
    scheduler.AddWaiting(p.first);
    return true;
  });
}

int64_t Engine::Impl::LinearStateBytesHeld() const {
  int64_t bytes = 0;
  for (const auto& [handle, r] : requests) {
    for (const auto& seq : r->seqs) {
      if (seq->linear && !seq->finished && seq->linear->allocated()) bytes += seq->linear->bytes();
    }
  }
  return bytes;
}

}  // namespace attnserve
