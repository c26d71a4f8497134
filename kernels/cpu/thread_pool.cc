#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace attnserve {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How long an idle worker polls for the next job before it sleeps. A decode
// step issues its parallel regions back to back with gaps far below this, so
// workers stay awake for a whole step and sleep between steps; waking a
// sleeping worker costs the caller several microseconds (futex, and on a VM
// an inter-processor interrupt through the hypervisor).
constexpr auto kSpinTime = std::chrono::microseconds(50);

// One 64-bit word tells workers everything about the current job:
//   bits 63..32  epoch, bumped for every job
//   bit  31      open: workers may still join
//   bits 30..0   number of workers that joined and have not finished
// Joining is a CAS on this word and closing clears `open` on it, so after the
// caller closes a job no late worker can join it, and the caller only waits
// for workers that actually took part (never for sleeping ones).
constexpr uint64_t kOpen = 1ull << 31;
constexpr uint64_t kCountMask = kOpen - 1;
constexpr uint64_t Epoch(uint64_t ctrl) { return ctrl >> 32; }

// Set while a thread runs tasks of some pool; nested ParallelFor calls from a
// task run inline instead of deadlocking on the pool.
thread_local bool t_inside_task = false;

}  // namespace

struct ThreadPool::State {
  std::vector<std::thread> workers;

  // `ctrl` and the job share a cache line: a worker that sees a new epoch
  // finds the job in the same line.
  alignas(64) std::atomic<uint64_t> ctrl{0};
  // The job. Written by the caller only while no worker can be inside it
  // (before opening, after all joined workers left), read by joined workers.
  const std::function<void(int64_t, int)>* task = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};

  // Sleeping. `sleepers` and `ctrl` are both seq_cst so that either the caller
  // sees a sleeper and notifies under the mutex, or the sleeper sees the new
  // epoch before it waits (no lost wake-up).
  alignas(64) std::mutex mu;
  std::condition_variable cv;
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};

  // Serialises ParallelFor calls from different threads.
  std::mutex call_mu;

  void RunTasks(int thread) {
    t_inside_task = true;
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) (*task)(i, thread);
    t_inside_task = false;
  }

  // Waits until the epoch differs from `seen`; returns the new ctrl word.
  uint64_t AwaitEpoch(uint64_t seen) {
    const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
    for (int spins = 0;; ++spins) {
      const uint64_t c = ctrl.load(std::memory_order_acquire);
      if (Epoch(c) != seen) return c;
      CpuRelax();
      if ((spins & 63) == 63 && std::chrono::steady_clock::now() > deadline) break;
    }
    std::unique_lock<std::mutex> lock(mu);
    sleepers.fetch_add(1);
    uint64_t c;
    cv.wait(lock, [&] { return Epoch(c = ctrl.load()) != seen; });
    sleepers.fetch_sub(1);
    return c;
  }

  void WorkerLoop(int thread) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t c = AwaitEpoch(seen);
      if (stop.load(std::memory_order_acquire)) return;
      seen = Epoch(c);
      while ((c & kOpen) && Epoch(c) == seen) {
        if (ctrl.compare_exchange_weak(c, c + 1, std::memory_order_acquire, std::memory_order_relaxed)) {
          RunTasks(thread);
          ctrl.fetch_sub(1, std::memory_order_release);
          break;
        }
      }
    }
  }

  // Bumps the epoch with the given flags and wakes sleeping workers.
  void Publish(uint64_t flags) {
    const uint64_t epoch = Epoch(ctrl.load(std::memory_order_relaxed)) + 1;
    ctrl.store((epoch << 32) | flags);
    if (sleepers.load() > 0) {
      { std::lock_guard<std::mutex> lock(mu); }
      cv.notify_all();
    }
  }
};

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(num_threads < 1 ? 1 : num_threads), state_(std::make_unique<State>()) {
  for (int t = 1; t < num_threads_; ++t) {
    state_->workers.emplace_back([s = state_.get(), t] { s->WorkerLoop(t); });
  }
}

ThreadPool::~ThreadPool() {
  state_->stop.store(true, std::memory_order_release);
  state_->Publish(0);
  for (auto& w : state_->workers) w.join();
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t, int)>& task) {
  if (n <= 0) return;
  if (num_threads_ == 1 || n == 1 || t_inside_task) {
    for (int64_t i = 0; i < n; ++i) task(i, 0);
    return;
  }
  State& s = *state_;
  std::lock_guard<std::mutex> call_lock(s.call_mu);
  s.task = &task;
  s.n = n;
  s.next.store(0, std::memory_order_relaxed);
  s.Publish(kOpen);
  s.RunTasks(0);
  // Close the job, then wait for the workers that joined it to finish.
  uint64_t c = s.ctrl.fetch_and(~kOpen, std::memory_order_acq_rel) & ~kOpen;
  for (int spins = 0; (c & kCountMask) != 0; ++spins) {
    if (spins < 4096) {
      CpuRelax();
    } else {
      std::this_thread::yield();  // a joined worker was preempted
    }
    c = s.ctrl.load(std::memory_order_acquire);
  }
}

}  // namespace attnserve
