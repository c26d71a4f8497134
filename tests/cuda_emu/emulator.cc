#include "tests/cuda_emu/emulator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"

// Fibers switch by saving the callee-saved registers on their own stack
// (x86-64 System V), without swapcontext's signal-mask system call at each
// of a kernel's thousands of barriers and warp operations. The floating-point control words are not switched: no
// kernel changes them.
extern "C" void attnserve_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .globl attnserve_emu_switch
  .type attnserve_emu_switch, @function
attnserve_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size attnserve_emu_switch, .-attnserve_emu_switch
  .popsection
)");

namespace attnserve::emu {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kStackBytes = 128 * 1024;

struct Copy {
  void* dst;
  const void* src;
  size_t bytes;
};

enum class Wait { kNone, kBarrier, kWarp };

struct Fiber {
  void* sp = nullptr;
  unsigned char* stack = nullptr;  // kStackBytes, from the calling thread's pool
  uint3 idx{};
  int index = 0, warp = 0, lane = 0;
  bool done = false;
  Wait wait = Wait::kNone;  // what it is blocked at, for a deadlock's report
  std::vector<std::vector<Copy>> groups;  // committed, oldest first
  std::vector<Copy> open;
};

struct WarpState {
  int size = 0, live = 0, arrived = 0;
  int64_t gen = 0;
  uint64_t slots[2][kWarpSize] = {};  // by generation parity: a lane may run one operation ahead
  int waiters[kWarpSize] = {};        // fibers blocked at the operation; the last to arrive goes on
};

struct BlockState {
  uint3 idx{};
  dim3 dim, grid;
  int live = 0, arrived = 0;
  std::vector<int> barrier_waiters;
  std::vector<WarpState> warps;
  // Fibers to run, first in first out: a barrier or warp operation queues
  // those it releases, so the scheduler never looks at a blocked one.
  std::vector<int> ready;
  size_t ready_head = 0;
  std::vector<unsigned char> shared_storage;
  unsigned char* shared = nullptr;  // 128-byte aligned, as the device's
  size_t shared_bytes = 0;
  std::string error;  // the first; the block stops at it
};

struct Emulator {
  std::vector<Fiber> fibers;
  BlockState block;
  Fiber* current = nullptr;
  void* scheduler_sp = nullptr;
  const std::function<void()>* body = nullptr;
};

thread_local Emulator* emulator = nullptr;

// Fiber i's stack, kept across launches: a launch of 512 threads would
// otherwise map and fault in 64 MB.
unsigned char* Stack(size_t i) {
  thread_local std::vector<std::unique_ptr<unsigned char[]>> stacks;
  while (stacks.size() <= i) stacks.push_back(std::make_unique_for_overwrite<unsigned char[]>(kStackBytes));
  return stacks[i].get();
}

Emulator& Self() {
  if (emulator == nullptr || emulator->current == nullptr) {
    std::fprintf(stderr, "attnserve::emu: device code called outside emu::Run\n");
    std::abort();
  }
  return *emulator;
}

void Yield() {
  Emulator& e = Self();
  attnserve_emu_switch(&e.current->sp, e.scheduler_sp);
}


void Perform(const std::vector<Copy>& group) {
  for (const Copy& c : group) std::memcpy(c.dst, c.src, c.bytes);
}

// The process's order: ATTNSERVE_EMULATOR_ORDER's, until SetThreadOrder.
ThreadOrder& CurrentOrder() {
  static ThreadOrder order = [] {
    const char* env = std::getenv("ATTNSERVE_EMULATOR_ORDER");
    const std::string_view name = env != nullptr ? env : "";
    if (name == "warps") return ThreadOrder::kWarps;
    if (name == "warps-reversed") return ThreadOrder::kWarpsReversed;
    if (!name.empty()) std::fprintf(stderr, "attnserve::emu: ATTNSERVE_EMULATOR_ORDER=%s: unknown, ignored\n", env);
    return ThreadOrder::kSideBySide;
  }();
  return order;
}

void ReleaseBarrier(BlockState& b) {
  if (CurrentOrder() == ThreadOrder::kWarpsReversed) std::reverse(b.barrier_waiters.begin(), b.barrier_waiters.end());
  b.ready.insert(b.ready.end(), b.barrier_waiters.begin(), b.barrier_waiters.end());
  b.barrier_waiters.clear();
  b.arrived = 0;
}

void ReleaseWarp(BlockState& b, WarpState& w) {
  const auto at = CurrentOrder() == ThreadOrder::kSideBySide ? b.ready.end() : b.ready.begin() + b.ready_head;
  b.ready.insert(at, w.waiters, w.waiters + w.arrived - 1);
  w.arrived = 0;
  ++w.gen;
}

[[noreturn]] void FiberMain() {
  Emulator& e = *emulator;
  (*e.body)();
  Fiber& f = *e.current;
  for (const std::vector<Copy>& g : f.groups) Perform(g);  // copies not waited for still land
  Perform(f.open);
  f.done = true;
  BlockState& b = e.block;
  WarpState& w = b.warps[f.warp];
  --b.live;
  --w.live;
  // Threads that have exited no longer hold up a barrier.
  if (b.arrived > 0 && b.arrived == b.live) ReleaseBarrier(b);
  for (;;) attnserve_emu_switch(&f.sp, e.scheduler_sp);
}

// A fresh stack whose first switch "returns" into FiberMain.
void Prepare(Fiber& f) {
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top - 64);  // FiberMain starts with rsp = 8 mod 16, as after a call
  for (int i = 0; i < 6; ++i) sp[i] = 0;            // r15 … rbp
  sp[6] = reinterpret_cast<uint64_t>(&FiberMain);
  f.sp = sp;
}

std::string Stuck(const Emulator& e) {
  int at_barrier = 0, at_warp = 0;
  for (const Fiber& f : e.fibers) {
    if (f.done) continue;
    (f.wait == Wait::kWarp ? at_warp : at_barrier) += 1;
  }
  return absl::StrCat("deadlock: ", at_barrier, " threads wait at __syncthreads and ", at_warp,
                      " at warp operations, ", e.block.live, " live (a barrier not every thread reaches?)");
}

absl::Status RunBlock(Emulator& e) {
  BlockState& b = e.block;
  const unsigned n = b.dim.x * b.dim.y * b.dim.z;
  b.live = static_cast<int>(n);
  b.arrived = 0;
  b.error.clear();
  b.warps.assign((n + kWarpSize - 1) / kWarpSize, WarpState{});
  std::memset(b.shared, 0xff, b.shared_bytes);
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = e.fibers[i];
    f.idx = {i % b.dim.x, i / b.dim.x % b.dim.y, i / (b.dim.x * b.dim.y)};
    f.warp = static_cast<int>(i / kWarpSize);
    f.lane = static_cast<int>(i % kWarpSize);
    f.index = static_cast<int>(i);
    f.done = false;
    f.wait = Wait::kNone;
    f.groups.clear();
    f.open.clear();
    ++b.warps[f.warp].size;
    ++b.warps[f.warp].live;
    f.stack = Stack(i);
    Prepare(f);
  }
  b.ready.resize(n);
  const bool reversed = CurrentOrder() == ThreadOrder::kWarpsReversed;
  for (unsigned i = 0; i < n; ++i) b.ready[i] = static_cast<int>(reversed ? n - 1 - i : i);
  b.ready_head = 0;
  b.barrier_waiters.clear();
  while (b.ready_head < b.ready.size()) {
    Fiber& f = e.fibers[b.ready[b.ready_head++]];
    if (b.ready_head == b.ready.size()) {
      b.ready.clear();
      b.ready_head = 0;
    }
    f.wait = Wait::kNone;
    e.current = &f;
    current_thread_idx = &f.idx;
    current_lane = f.lane;
    attnserve_emu_switch(&e.scheduler_sp, f.sp);
    e.current = nullptr;
    if (!b.error.empty()) return absl::InternalError(b.error);
  }
  if (b.live == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(Stuck(e), " in block ", b.idx.x, ",", b.idx.y, ",", b.idx.z));
}

}  // namespace

absl::Status Run(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > kMaxThreads) return absl::InternalError(absl::StrCat("a block of ", n, " threads"));
  if (shared_bytes > kMaxSharedBytes) {
    return absl::InternalError(absl::StrCat(shared_bytes, " bytes of dynamic shared memory"));
  }
  if (emulator != nullptr) return absl::InternalError("a launch from inside a kernel");
  Emulator e;
  e.fibers.resize(n);
  e.block.dim = block;
  e.block.grid = grid;
  e.block.shared_storage.resize(shared_bytes + 128);
  const auto base = reinterpret_cast<uintptr_t>(e.block.shared_storage.data());
  e.block.shared = e.block.shared_storage.data() + ((128 - base % 128) % 128);
  e.block.shared_bytes = shared_bytes;
  e.body = &body;
  emulator = &e;
  absl::Status s = absl::OkStatus();
  for (unsigned z = 0; z < grid.z && s.ok(); ++z) {
    for (unsigned y = 0; y < grid.y && s.ok(); ++y) {
      for (unsigned x = 0; x < grid.x && s.ok(); ++x) {
        e.block.idx = {x, y, z};
        s = RunBlock(e);
      }
    }
  }
  emulator = nullptr;
  return s;
}

[[noreturn]] void Fail(std::string message) {
  Emulator& e = Self();
  if (e.block.error.empty()) {
    const uint3 b = e.block.idx, t = e.current->idx;
    e.block.error = absl::StrCat(message, " (block ", b.x, ",", b.y, ",", b.z, " thread ", t.x, ",", t.y, ",", t.z, ")");
  }
  // Parked for good, queued nowhere: the scheduler abandons the block.
  for (;;) Yield();
}


thread_local const uint3* current_thread_idx = nullptr;
thread_local int current_lane = 0;

const uint3& BlockIdx() { return Self().block.idx; }
const dim3& BlockDim() { return Self().block.dim; }
const dim3& GridDim() { return Self().block.grid; }

void SyncThreads() {
  Emulator& e = Self();
  BlockState& b = e.block;
  if (++b.arrived == b.live) {
    ReleaseBarrier(b);
    return;
  }
  b.barrier_waiters.push_back(e.current->index);
  e.current->wait = Wait::kBarrier;
  Yield();
}

const uint64_t* WarpExchange(unsigned mask, uint64_t value) {
  Emulator& e = Self();
  Fiber& f = *e.current;
  WarpState& w = e.block.warps[f.warp];
  const unsigned whole = w.size == kWarpSize ? 0xffffffffu : (1u << w.size) - 1;
  if (mask != 0xffffffffu && mask != whole) Fail(absl::StrCat("a warp operation with mask ", mask));
  if (w.live != w.size) Fail("a warp operation after a lane of the warp exited");
  uint64_t* slots = w.slots[w.gen & 1];
  slots[f.lane] = value;
  if (w.arrived + 1 == w.live) {
    for (int i = w.size; i < kWarpSize; ++i) slots[i] = 0;
    ++w.arrived;
    ReleaseWarp(e.block, w);
    return slots;
  }
  w.waiters[w.arrived++] = f.index;
  f.wait = Wait::kWarp;
  Yield();
  return slots;
}

unsigned char* DynamicShared() { return Self().block.shared; }
size_t DynamicSharedBytes() { return Self().block.shared_bytes; }

void SetThreadOrder(ThreadOrder order) { CurrentOrder() = order; }

void CopyAsync(void* dst, const void* src, size_t bytes) {
  if (CurrentOrder() == ThreadOrder::kWarpsReversed) {
    std::memcpy(dst, src, bytes);  // the earliest the device may write it
    return;
  }
  Self().current->open.push_back({dst, src, bytes});
}

void CommitCopies() {
  Fiber& f = *Self().current;
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

void WaitCopies(int pending) {
  Fiber& f = *Self().current;
  while (static_cast<int>(f.groups.size()) > pending) {
    Perform(f.groups.front());
    f.groups.erase(f.groups.begin());
  }
}

}  // namespace attnserve::emu
