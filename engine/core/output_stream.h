// Hands a request's outputs from the engine thread to its reader.
//
// The engine never waits for a reader: deltas pushed while the reader is
// still writing the previous message are merged into one pending delta per
// completion, so a slow client costs memory proportional to its own output
// (bounded by max_tokens) and nothing else.
#pragma once

#include <functional>
#include <mutex>
#include <vector>

#include "engine/core/request.h"

namespace attnserve {

class OutputStream {
 public:
  // Called (on the engine thread, without the lock) when a delta arrives
  // while the reader is idle, i.e. after Take returned empty.
  explicit OutputStream(std::function<void()> on_ready) : on_ready_(std::move(on_ready)) {}

  // Engine side.
  void Push(GenerationDelta delta);

  // Reader side: moves out every pending delta (merged per completion, in
  // index order). Empty means nothing is pending; on_ready fires on the next
  // Push.
  std::vector<GenerationDelta> Take();

  // True once a delta with a finish reason or an error was pushed for every
  // completion; the reader may stop after taking it.
  bool closed() const;

 private:
  mutable std::mutex mu_;
  std::function<void()> on_ready_;
  std::vector<GenerationDelta> pending_;
  bool reader_waiting_ = true;
  int finished_ = 0;
  int completions_ = 1;
  friend class Engine;  // sets completions_ at submission
};

}  // namespace attnserve
