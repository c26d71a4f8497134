#include "tools/local_engine.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/common/status_macros.h"

namespace attnserve {

absl::StatusOr<std::unique_ptr<LocalEngine>> OpenLocalEngine(const std::string& model_path, int num_threads) {
  auto engine = std::make_unique<LocalEngine>();
  const absl::Time start = absl::Now();
  ATTN_ASSIGN_OR_RETURN(engine->model, LoadModel(model_path, [&](double fraction) {
                          absl::FPrintF(stderr, "\rloading %s: %3.0f%%", model_path, 100.0 * fraction);
                        }));
  const ModelConfig& c = engine->model->config;
  absl::FPrintF(stderr, "\rloaded %s: %s, %d layers, %.1f MB of weights in %.2f s\n", model_path, c.name,
                c.n_layers, engine->model->weights.matrix_bytes / 1e6, absl::ToDoubleSeconds(absl::Now() - start));
  const KvCacheShape shape{c.n_layers, c.n_kv_heads, c.head_dim, 16};
  const int32_t pages = (c.context_length + shape.page_size - 1) / shape.page_size;
  ATTN_ASSIGN_OR_RETURN(KvCachePool pool, KvCachePool::Create(shape, pages));
  engine->pool = std::make_unique<KvCachePool>(std::move(pool));
  engine->allocator = std::make_unique<PageAllocator>(pages);
  CpuBackendOptions options;
  options.num_threads = num_threads;
  engine->step_tokens = options.max_step_tokens;
  ATTN_ASSIGN_OR_RETURN(engine->backend, CpuBackend::Create(*engine->model, *engine->pool, options));
  return engine;
}

absl::Status Prefill(LocalEngine& engine, PageTable& table, std::span<const int32_t> tokens,
                     LogitsWanted wanted, std::vector<float>& logits) {
  std::vector<float> chunk_logits;
  for (size_t begin = 0; begin < tokens.size(); begin += engine.step_tokens) {
    const size_t n = std::min<size_t>(engine.step_tokens, tokens.size() - begin);
    const bool last = begin + n == tokens.size();
    SequenceStep step;
    step.pages = &table;
    step.tokens = tokens.subspan(begin, n);
    step.first_pos = table.num_tokens;
    step.logits = wanted == LogitsWanted::kAll ? LogitsWanted::kAll : (last ? wanted : LogitsWanted::kNone);
    ATTN_RETURN_IF_ERROR(ReservePages(table, table.num_tokens + static_cast<int32_t>(n),
                                      engine.pool->shape().page_size, *engine.allocator));
    ATTN_RETURN_IF_ERROR(engine.backend->Forward({&step, 1}, chunk_logits));
    table.num_tokens += static_cast<int32_t>(n);
    logits.insert(logits.end(), chunk_logits.begin(), chunk_logits.end());
  }
  return absl::OkStatus();
}

}  // namespace attnserve
