// A CUDA emulator on the host, for the kernels' tests on machines without a
// GPU: the kernels of kernels/cuda, compiled as plain C++ (device_shims.h),
// run here with the semantics they rely on. Each block runs alone, its
// threads as fibers switched at every barrier and warp operation, so that
// __syncthreads, the warp shuffles and votes, shared memory (static and
// dynamic) and cp.async copies behave as on the device; what the device
// leaves undefined is reported as an error rather than guessed at:
//   - a barrier some threads never reach (deadlock, divergent __syncthreads);
//   - a warp operation after a lane of the warp has exited, or with a mask
//     other than the whole warp;
//   - a block larger than 1024 threads, dynamic shared memory past 227 KB.
// Dynamic shared memory starts as 0xff bytes (NaN in fp16 and fp32), so
// that reading what was never written shows in the results; async copies
// land only when their thread waits for them. Races between warps show as
// results that differ between thread orders (ThreadOrder below); the rest
// is compute-sanitizer's racecheck on a GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"

namespace attnserve::emu {

// The most dynamic shared memory a block may ask for (Hopper's 227 KB).
inline constexpr size_t kMaxSharedBytes = 227 * 1024;

// Runs `body` as every thread of every block of the grid, blocks in x, y, z
// order. INTERNAL with what went wrong (above) and where.
absl::Status Run(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

// The calling thread's place, as threadIdx and friends read it.
extern thread_local const uint3* current_thread_idx;
extern thread_local int current_lane;
inline const uint3& ThreadIdx() { return *current_thread_idx; }
const uint3& BlockIdx();
const dim3& BlockDim();
const dim3& GridDim();

inline int Lane() { return current_lane; }  // threadIdx's linear index % 32
void SyncThreads();
// Every lane of the warp deposits `value`; returns the warp's 32 deposits
// (lanes past a partial warp's end hold 0), valid until the lane's next
// exchange.
const uint64_t* WarpExchange(unsigned mask, uint64_t value);
unsigned char* DynamicShared();
size_t DynamicSharedBytes();  // the launch's shared_bytes

// Ends the launch with INTERNAL: `message` and the calling thread's place.
[[noreturn]] void Fail(std::string message);

// The order in which a block's ready threads run, and when cp.async
// copies land. kSideBySide (the default): every barrier and warp operation
// queues the threads it releases behind the others, so the warps move on
// side by side, and a copy lands at its thread's wait (the latest the
// device may write it). kWarps: the lanes a warp operation releases run
// first, so that each warp runs on to its next __syncthreads before the
// next warp starts. kWarpsReversed: the same, last warp first, and copies
// land as they are issued (the earliest). A race between warps (a read of
// what another warp writes, or a write over what it still reads, that no
// barrier orders) gives results that differ in one of them. The process
// starts with ATTNSERVE_EMULATOR_ORDER's: warps, warps-reversed, or unset.
enum class ThreadOrder { kSideBySide, kWarps, kWarpsReversed };
void SetThreadOrder(ThreadOrder order);

// cp.async: queued by the calling thread, done when it waits for them (or
// at once, under kWarpsReversed).
void CopyAsync(void* dst, const void* src, size_t bytes);
void CommitCopies();
void WaitCopies(int pending);

// The launches of kernels/cuda's Run* templates, as StreamLauncher's on a
// GPU: launch(name, kernel, grid, block, shared_bytes, args...).
struct Launcher {
  template <typename... Params, typename... Args>
  absl::Status operator()(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                          Args&&... args) const {
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    absl::Status s = Run(grid, block, shared_bytes, [&] { std::apply(kernel, params); });
    if (!s.ok()) return absl::Status(s.code(), std::string(name) + ": " + std::string(s.message()));
    return s;
  }
};

}  // namespace attnserve::emu
