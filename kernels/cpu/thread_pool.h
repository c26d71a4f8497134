// A fixed pool of worker threads for data-parallel kernels.
//
// Kernels split their work into `n` independent tasks; ParallelFor runs
// task(i, thread_index) for i in [0, n) and returns when all have finished.
// Workers spin briefly before sleeping so that the many short parallel
// regions of a decode step do not pay a futex wake-up each.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace attnserve {

class ThreadPool {
 public:
  // num_threads includes the calling thread; 1 means run inline.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs task(i, thread) for every i in [0, n); thread is in [0, num_threads).
  // Tasks are handed out dynamically, so uneven tasks balance themselves.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int)>& task);

 private:
  struct State;
  int num_threads_;
  std::unique_ptr<State> state_;
};

}  // namespace attnserve
