// A model, its KV cache and a CPU backend for one-sequence command-line use
// (generate, score). The server has its own engine with a scheduler.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/model.h"

namespace attnserve {

struct LocalEngine {
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCachePool> pool;
  std::unique_ptr<PageAllocator> allocator;
  std::unique_ptr<CpuBackend> backend;
  int32_t step_tokens = 0;  // prefill chunk size
};

// Loads the model (with a progress line on stderr) and sizes the cache for
// one sequence of the model's full context.
absl::StatusOr<std::unique_ptr<LocalEngine>> OpenLocalEngine(const std::string& model_path, int num_threads);

// Prefills `tokens` after the cached positions [0, table.num_tokens) in
// chunks, growing the page table. Logits of every token (kAll) or of the last
// one (kLast) are appended to `logits`.
absl::Status Prefill(LocalEngine& engine, PageTable& table, std::span<const int32_t> tokens,
                     LogitsWanted wanted, std::vector<float>& logits);

}  // namespace attnserve
