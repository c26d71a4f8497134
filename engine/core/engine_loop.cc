// The engine thread: admit requests, schedule, run a step, sample, emit.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/core/engine_impl.h"
#include "engine/metrics/metrics.h"
#include "engine/sampling/sampler.h"

namespace attnserve {
namespace {

// Salt that keeps a request's pages to itself; its n completions share them.
uint64_t PrivateSalt(uint64_t handle) { return 0x5eed000000000000ull ^ (handle * 0x9e3779b97f4a7c15ull); }

StepPhase PhaseOf(const ScheduleOutput& schedule) {
  bool prefill = false, decode = false;
  for (const ScheduledChunk& c : schedule.chunks) {
    // A decode step feeds exactly the last sampled token.
    const bool is_decode = c.num_tokens == 1 && c.seq->num_computed + 1 == static_cast<int32_t>(c.seq->tokens.size()) &&
                           static_cast<const Sequence*>(c.seq)->generated > 0;
    (is_decode ? decode : prefill) = true;
  }
  return prefill && decode ? StepPhase::kMixed : (decode ? StepPhase::kDecode : StepPhase::kPrefill);
}

const AttentionPlan* PlanOf(const Sequence& seq) { return seq.request->request.attention.get(); }

}  // namespace

void Engine::Impl::Loop() {
  for (;;) {
    std::vector<std::unique_ptr<RequestState>> incoming;
    std::vector<std::pair<uint64_t, absl::Status>> aborted;
    bool drain_expired = false;
    absl::Status unhealthy;
    {
      std::unique_lock<std::mutex> lock(mu);
      const auto has_work = [&] {
        return stopping || !inbox.empty() || !aborts.empty() || scheduler.num_running() > 0 ||
               scheduler.num_waiting() > 0 || !parked_linear.empty();
      };
      // Sleep while idle, but wake for deadlines and the drain timeout.
      while (!has_work()) wake.wait_for(lock, std::chrono::milliseconds(requests.empty() ? 1000 : 10));
      incoming.swap(inbox);
      aborted.swap(aborts);
      drain_expired = draining && absl::Now() >= drain_deadline;
      if (stopping) drain_expired = true;
      unhealthy = health;
    }
    AdmitNew(incoming);
    for (auto& [handle, status] : aborted) {
      auto it = requests.find(handle);
      if (it != requests.end()) FailRequest(*it->second, status);
    }
    ExpireDeadlines(absl::Now());
    // Requests queued before the backend failed have nothing to run on.
    if (!unhealthy.ok()) FailAll(unhealthy);
    if (drain_expired) FailAll(absl::UnavailableError("the server is shutting down"));
    FlushOutputs();
    bool stop_now;
    {
      std::lock_guard<std::mutex> lock(mu);
      stop_now = stopping && requests.empty();
    }
    if (stop_now) break;
    UnparkLinear();
    ScheduleOutput schedule = scheduler.Schedule();
    for (SchedSeq* s : schedule.out_of_memory) {
      FinishSequence(static_cast<Sequence&>(*s), FinishReason::kLength, absl::OkStatus());
    }
    AllocateLinearStates(schedule);
    if (!schedule.chunks.empty()) RunStep(schedule);
    FlushOutputs();
    PublishStats(schedule);
  }
}

void Engine::Impl::AdmitNew(std::vector<std::unique_ptr<RequestState>>& incoming) {
  for (std::unique_ptr<RequestState>& r : incoming) {
    const AttentionPlan* plan = r->request.attention.get();
    if (metrics) {
      const PolicyLabels labels = plan != nullptr ? plan->labels() : PolicyLabels{};
      metrics->CountRequest(labels.mode, labels.sink, labels.calibration);
    }
    // Requests whose policies change prefill K/V differently never share
    // pages; dense ones (signature 0) share with requests without a plan.
    const uint64_t policy_salt = plan != nullptr ? plan->prefill_signature() : 0;
    // ACT's key sets depend on the whole prompt: its pages are the request's own.
    if (plan != nullptr && plan->act()) r->act_sets = std::make_unique<ActKeySets>(*plan);
    const int32_t n = r->score ? 1 : std::max(1, r->request.sampling.n);
    for (int32_t i = 0; i < n; ++i) {
      auto seq = std::make_unique<Sequence>();
      seq->request = r.get();
      seq->index = i;
      seq->priority = r->request.priority;
      seq->tokens = r->request.prompt_ids;
      seq->num_prompt = static_cast<int32_t>(seq->tokens.size());
      seq->pending.index = i;
      if (r->act_sets) seq->min_first_chunk = plan->prompt_tokens();
      if (plan != nullptr && plan->linear()) {
        const ModelConfig& c = model.config;
        seq->linear = std::make_unique<LinearAttentionState>(c.n_layers, c.n_kv_heads, c.head_dim);
      }
      if (r->score) {
        seq->max_chunk = kScoreChunkTokens;
        seq->use_prefix_cache = false;
      } else {
        SamplingOptions sampling = r->request.sampling;
        if (sampling.seed.has_value()) sampling.seed = *sampling.seed + static_cast<uint64_t>(i);
        seq->sampler.emplace(sampling, seq->tokens, eog_ids);
        seq->stop.emplace(r->request.sampling.stop, r->request.sampling.min_tokens);
        // Completions of one request always share the prompt's pages; other
        // requests only when prefix caching is on.
        seq->cache_salt = (options.prefix_caching && !r->act_sets ? 0 : PrivateSalt(r->handle)) ^ policy_salt;
        // The linear state is not in the pages: every completion builds its own.
        if (seq->linear) seq->use_prefix_cache = false;
      }
      // DuoAttention's streaming KV heads give their old K/V back by head:
      // such pages hold no block whole, so they are never shared, and every
      // completion prefills its own prompt.
      if (plan != nullptr && !plan->windowed_kv_heads().empty()) {
        const std::span<const int32_t> heads = plan->windowed_kv_heads();
        seq->pages = PackedPageTable(pool.shape(), pool.layer_pages(), {heads.begin(), heads.end()},
                                     plan->kv_head_window());
        seq->use_prefix_cache = false;
      }
      r->seqs.push_back(std::move(seq));
    }
    r->unfinished = n;
    RequestState* raw = r.get();
    requests.emplace(r->handle, std::move(r));
    // Siblings start once the first completion's prompt is in the cache.
    StartSequence(*raw->seqs[0]);
  }
}

void Engine::Impl::FailAll(const absl::Status& why) {
  std::vector<RequestState*> all;
  for (auto& [h, r] : requests) all.push_back(r.get());
  for (RequestState* r : all) FailRequest(*r, why);
}

void Engine::Impl::TurnUnhealthy(absl::Status why) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!health.ok()) return;
    health = why;
  }
  FailAll(why);
  std::lock_guard<std::mutex> lock(listener_mu);
  if (health_listener) health_listener(why);
}

void Engine::Impl::StartSequence(Sequence& seq) {
  seq.arrival_order = next_arrival++;
  seq.scheduled = true;
  scheduler.AddWaiting(&seq);
}

void Engine::Impl::RunStep(const ScheduleOutput& schedule) {
  const absl::Time now = absl::Now();
  steps.clear();
  for (const ScheduledChunk& c : schedule.chunks) {
    Sequence& seq = static_cast<Sequence&>(*c.seq);
    if (!seq.request->first_scheduled) {
      seq.request->first_scheduled = now;
      if (metrics) metrics->ObserveQueueTime(absl::ToDoubleSeconds(now - seq.request->request.arrival));
    }
    SequenceStep step;
    step.pages = &seq.pages;
    step.tokens = std::span<const int32_t>(seq.tokens).subspan(seq.num_computed, c.num_tokens);
    step.first_pos = seq.num_computed;
    const bool reaches_end = seq.num_computed + c.num_tokens == static_cast<int32_t>(seq.tokens.size());
    step.logits = seq.request->score ? LogitsWanted::kAll : (reaches_end ? LogitsWanted::kLast : LogitsWanted::kNone);
    // The backend picks the token, and the row stays where it is: every
    // draw where the row would cross PCIe, greedy picks of rows as they are
    // (the host sampler's own choice) on any backend.
    if (step.logits == LogitsWanted::kLast &&
        (backend->picks_tokens() ||
         (seq.sampler->greedy() && !seq.sampler->logprobs() && seq.sampler->DrawsFromTheRowAsItIs()))) {
      step.logits = LogitsWanted::kLastPick;
      seq.pick = seq.sampler->NextPick();
      seq.sampler->Edits(seq.pick_edits);
      seq.pick.edits = seq.pick_edits.data();
      seq.pick.n_edits = static_cast<int32_t>(seq.pick_edits.size());
      step.pick = &seq.pick;
    }
    step.attention = PlanOf(seq);
    step.act_sets = seq.request->act_sets.get();
    step.linear = seq.linear.get();
    // Scoring under ACT runs the text twice: once whole to find the key
    // sets, then in chunks for the logits of every token.
    if (seq.request->score && step.act_sets != nullptr && !step.act_sets->complete()) step.logits = LogitsWanted::kNone;
    steps.push_back(step);
  }
  const absl::Status forward = backend->Forward(steps, logits);
  if (metrics) metrics->ObserveStepTime(PhaseOf(schedule), absl::ToDoubleSeconds(absl::Now() - now));
  if (const absl::Status& s = forward; !s.ok()) {
    std::vector<RequestState*> failed;
    for (const ScheduledChunk& c : schedule.chunks) failed.push_back(static_cast<Sequence*>(c.seq)->request);
    std::sort(failed.begin(), failed.end());
    failed.erase(std::unique(failed.begin(), failed.end()), failed.end());
    for (RequestState* r : failed) FailRequest(*r, absl::InternalError(absl::StrCat("engine step failed: ", s.message())));
    if (absl::Status h = backend->health(); !h.ok()) TurnUnhealthy(std::move(h));
    return;
  }
  if (metrics) {
    CountAttentionPages(schedule);
    const Backend::GraphCounts g = backend->graph_counts();
    metrics->AddGraphSteps(g.replayed - graph_counts_counted.replayed, g.captured - graph_counts_counted.captured,
                           g.padding_rows - graph_counts_counted.padding_rows);
    graph_counts_counted = g;
  }
  const size_t vocab = model.config.vocab_size;
  size_t row = 0;
  for (size_t i = 0; i < schedule.chunks.size(); ++i) {
    Sequence& seq = static_cast<Sequence&>(*schedule.chunks[i].seq);
    const int32_t n = schedule.chunks[i].num_tokens;
    const int32_t first = seq.num_computed;
    if (steps[i].act_sets != nullptr && steps[i].act_sets->complete()) {
      for (auto& s : seq.request->seqs) s->min_first_chunk = 0;
    }
    if (seq.request->score && steps[i].act_sets != nullptr && steps[i].logits == LogitsWanted::kNone) {
      continue;  // the key sets' pass: the text now runs again from its start, its pages kept
    }
    seq.num_computed += n;
    seq.pages.num_tokens = seq.num_computed;
    // Registering pages rehashes the sequence's whole prefix: past the
    // model's context (streaming positions=CACHE) it would cost O(n) per
    // page, and such long prefixes are not worth sharing.
    // Under Quest the generated tokens' K/V come from sparse attention,
    // while its salt is dense's (the prompt's pages are dense's): only the
    // prompt is shared.
    const AttentionPlan* plan = PlanOf(seq);
    const int32_t shareable = plan != nullptr && plan->quest_token_budget() > 0
                                  ? std::min(seq.num_computed, seq.num_prompt)
                                  : seq.num_computed;
    if (shareable / options.page_size > first / options.page_size && !seq.request->score && !seq.pages.packed() &&
        shareable <= model.config.context_length) {
      prefix_cache.Insert(std::span<const int32_t>(seq.tokens).first(shareable), seq.pages.pages, seq.cache_salt);
    }
    ReleaseHiddenPages(seq);
    if (seq.request->score) {
      AfterScoreRows(seq, first, n, &logits[row * vocab]);
      row += n;
      continue;
    }
    if (steps[i].logits != LogitsWanted::kLast && steps[i].logits != LogitsWanted::kLastPick) continue;
    const bool picked = steps[i].logits == LogitsWanted::kLastPick;
    std::span<float> last = picked ? std::span<float>() : std::span<float>(&logits[row * vocab], vocab);
    if (!picked) ++row;
    // The prompt is now cached: the other completions can start and share it.
    if (seq.index == 0 && seq.generated == 0) {
      for (auto& sibling : seq.request->seqs) {
        if (!sibling->scheduled) StartSequence(*sibling);
      }
    }
    SampledToken sampled;
    if (picked) {
      sampled.token = seq.pick.token;
      sampled.logprob = seq.pick.logprob;
      for (int32_t k = 0; k < seq.pick.n_top; ++k) {
        sampled.top.push_back({seq.pick.top_tokens[k], seq.pick.top_logprob_values[k]});
      }
    } else {
      sampled = seq.sampler->Sample(last);
    }
    AfterToken(seq, sampled.token, sampled);
  }
}

// Pages of keys no later query sees go back to the pool at once: a
// streaming sequence holds sinks + window, however long it runs. Slices of
// windowed KV heads go back to the sequence's own pool of slices.
void Engine::Impl::ReleaseHiddenPages(Sequence& seq) {
  const AttentionPlan* plan = PlanOf(seq);
  if (plan == nullptr) return;
  const int32_t slices = ReleaseWindowedSlices(seq.pages, seq.num_computed, options.page_size);
  if (metrics && slices > 0) metrics->AddEvictedHeadSlices(slices);
  const PageRange hidden = plan->visible_set().EvictablePages(seq.num_computed, options.page_size);
  if (hidden.empty()) return;
  const int32_t released = ReleasePageRange(seq.pages, allocator, hidden.begin, hidden.end);
  if (metrics && released > 0) metrics->AddEvictedPages(released);
}

// Per layer and KV head, the pages each sequence's attention read this step
// against those a dense read of its keys would have touched; from the
// visible-set rule alone, so it costs nothing per key.
void Engine::Impl::CountAttentionPages(const ScheduleOutput& schedule) {
  const int64_t heads = static_cast<int64_t>(model.config.n_layers) * model.config.n_kv_heads;
  int64_t read = 0, visible = 0;
  for (const ScheduledChunk& c : schedule.chunks) {
    const Sequence& seq = static_cast<const Sequence&>(*c.seq);
    const AttentionPlan* plan = PlanOf(seq);
    const int32_t first = seq.num_computed, last = seq.num_computed + c.num_tokens - 1;
    const int64_t all = last / options.page_size + 1;
    read += plan != nullptr ? plan->PagesRead(first, last, options.page_size) : all * heads;
    visible += all * heads;
  }
  metrics->AddAttentionPages(read, visible);
}

void Engine::Impl::AfterToken(Sequence& seq, int32_t token, const SampledToken& sampled) {
  RequestState& r = *seq.request;
  const absl::Time now = absl::Now();
  if (!r.first_token) {
    r.first_token = now;
    if (metrics) {
      metrics->ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - r.request.arrival));
      metrics->AddPromptTokens(seq.num_prompt);
    }
  } else if (metrics && seq.generated > 0) {
    metrics->ObserveInterTokenLatency(absl::ToDoubleSeconds(now - seq.last_token_time));
  }
  if (metrics) metrics->AddGenerationTokens(1);
  seq.last_token_time = now;
  seq.tokens.push_back(token);
  seq.sampler->Accept(token);
  ++seq.generated;
  const SamplingOptions& so = r.request.sampling;
  seq.pending.token_ids.push_back(token);
  if (so.logprobs) seq.pending.logprobs.push_back({sampled.logprob, sampled.top});
  const bool is_eog = model.tokenizer->IsEndOfGeneration(token) && !so.ignore_eos;
  const bool is_stop_token = std::find(so.stop_token_ids.begin(), so.stop_token_ids.end(), token) != so.stop_token_ids.end();
  if (is_eog || is_stop_token) {
    seq.pending.text += seq.stop->Flush();
    FinishSequence(seq, FinishReason::kStop, absl::OkStatus());
    return;
  }
  const StopChecker::Result text = seq.stop->Push(model.tokenizer->TokenBytes(token));
  seq.pending.text += text.delta;
  if (text.stopped) {
    FinishSequence(seq, FinishReason::kStop, absl::OkStatus());
    return;
  }
  if (seq.generated >= so.max_tokens ||
      static_cast<int32_t>(seq.tokens.size()) >= SequenceTokenLimit(PlanOf(seq), model.config.context_length)) {
    seq.pending.text += seq.stop->Flush();
    FinishSequence(seq, FinishReason::kLength, absl::OkStatus());
  }
}

void Engine::Impl::AfterScoreRows(Sequence& seq, int32_t first_pos, int32_t n, const float* rows) {
  RequestState& r = *seq.request;
  const size_t vocab = model.config.vocab_size;
  const int32_t total = static_cast<int32_t>(seq.tokens.size());
  r.token_logprobs.resize(total, 0.0f);
  std::vector<float> logprobs(vocab);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t pos = first_pos + i;
    if (pos + 1 >= total) break;
    LogSoftmax(std::span<const float>(rows + i * vocab, vocab), logprobs);
    r.token_logprobs[pos + 1] = logprobs[seq.tokens[pos + 1]];
  }
  if (seq.num_computed < total) return;
  ScoreResult result;
  result.token_ids = seq.tokens;
  result.token_logprobs = r.token_logprobs;
  double nll = 0.0;
  for (int32_t i = 1; i < total; ++i) nll -= r.token_logprobs[i];
  result.perplexity = std::exp(nll / (total - 1));
  r.score_result.set_value(std::move(result));
  r.score = false;  // the promise is spent; FinishSequence must not set it again
  FinishSequence(seq, FinishReason::kStop, absl::OkStatus());
}

void Engine::Impl::FinishSequence(Sequence& seq, FinishReason reason, absl::Status error) {
  if (seq.finished) return;
  RequestState& r = *seq.request;
  seq.finished = true;
  if (seq.scheduled) scheduler.Remove(&seq);
  std::erase_if(parked_linear, [&](const std::pair<Sequence*, int64_t>& p) { return p.first == &seq; });
  {
    // Whoever sees the stream close sees its pages back in the pool.
    std::lock_guard<std::mutex> lock(mu);
    stats.kv_pages_used = scheduler.pages_in_use();
  }
  seq.pending.finish_reason = reason;
  seq.pending.error = std::move(error);
  seq.pending.prompt_tokens = seq.num_prompt;
  seq.pending.completion_tokens = seq.generated;
  seq.pending.cached_prompt_tokens = std::min(seq.cached_tokens, seq.num_prompt);
  const absl::Time arrival = r.request.arrival;
  if (r.first_scheduled) seq.pending.queue_seconds = absl::ToDoubleSeconds(*r.first_scheduled - arrival);
  if (r.first_token) seq.pending.time_to_first_token_seconds = absl::ToDoubleSeconds(*r.first_token - arrival);
  if (r.score) r.score_result.set_value(seq.pending.error.ok() ? absl::AbortedError("scoring aborted") : seq.pending.error);
  if (metrics && !r.score && seq.pending.error.ok()) {
    metrics->CountSuccess(reason == FinishReason::kStop ? "stop" : (reason == FinishReason::kLength ? "length" : "abort"));
  }
  if (r.out) r.out->Push(std::move(seq.pending));
  seq.pending = GenerationDelta{};
  seq.pending.index = seq.index;
  if (--r.unfinished > 0) return;
  if (metrics && !r.score) metrics->ObserveE2eLatency(absl::ToDoubleSeconds(absl::Now() - arrival));
  requests.erase(r.handle);  // destroys r and its sequences
  std::lock_guard<std::mutex> lock(mu);
  if (--queued == 0) idle.notify_all();
}

void Engine::Impl::FailRequest(RequestState& r, absl::Status error) {
  // FinishSequence may destroy r with its last sequence: collect first.
  std::vector<Sequence*> live;
  for (auto& s : r.seqs) {
    if (!s->finished) live.push_back(s.get());
  }
  for (Sequence* s : live) FinishSequence(*s, FinishReason::kAbort, error);
}

void Engine::Impl::FlushOutputs() {
  for (auto& [handle, r] : requests) {
    if (!r->out) continue;
    for (auto& seq : r->seqs) {
      if (seq->finished || (seq->pending.token_ids.empty() && seq->pending.text.empty())) continue;
      r->out->Push(std::move(seq->pending));
      seq->pending = GenerationDelta{};
      seq->pending.index = seq->index;
    }
  }
}

void Engine::Impl::ExpireDeadlines(absl::Time now) {
  std::vector<RequestState*> expired;
  for (auto& [handle, r] : requests) {
    if (now >= r->request.deadline) expired.push_back(r.get());
  }
  for (RequestState* r : expired) FailRequest(*r, absl::DeadlineExceededError("the request's deadline passed"));
}

void Engine::Impl::PublishStats(const ScheduleOutput& schedule) {
  std::lock_guard<std::mutex> lock(mu);
  stats.preemptions_total += static_cast<int64_t>(schedule.preempted.size());
  stats.running = scheduler.num_running();
  stats.waiting = scheduler.num_waiting() + static_cast<int32_t>(parked_linear.size());
  stats.kv_pages_used = scheduler.pages_in_use();
  if (metrics) {
    metrics->AddPreemptions(static_cast<int64_t>(schedule.preempted.size()));
    metrics->AddPrefixCacheTokens(schedule.prefix_cache_queried_tokens, schedule.prefix_cache_hit_tokens);
    metrics->SetRunning(stats.running);
    metrics->SetWaiting(stats.waiting);
    metrics->SetKvCacheUsage(stats.kv_pages_total > 0 ? static_cast<double>(stats.kv_pages_used) / stats.kv_pages_total : 0.0);
    metrics->SetLinearStateBytes(LinearStateBytesHeld());
  }
}

}  // namespace attnserve
