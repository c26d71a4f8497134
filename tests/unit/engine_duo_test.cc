// DuoAttention in the serving engine on the default model: the KV heads
// whose query heads all stream give their K/V outside sinks + recent window
// back (pages packed by head), the sequence holds about the retrieval
// heads' share of a dense sequence's pages, and the tokens are those of the
// backend over an ordinary page table, through chunked prefill and
// preemption.
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/engine_policy_fixture.h"

namespace attnserve {
namespace {

constexpr const char* kPrompt =
    "A guide to the lighthouse, for visitors. The tower is forty metres tall and has one hundred and "
    "eighty-two steps. The lamp was first lit in 1874 and was kept by three families in turn. The last "
    "keeper left in 1989, when the light was automated. The museum on the ground floor shows";

// Retrieval heads: KV group 0 of layer 3 and one query head of layer 10
// (so layer 10's group 0 keeps everything); every other KV head streams.
PolicySpec Duo(uint32_t sinks, uint32_t recent) {
  PolicySpec spec;
  spec.mode = DuoSpec{{{3, 0}, {3, 1}, {3, 2}, {10, 1}}, sinks, recent};
  return spec;
}

TEST_F(EnginePolicyTest, DuoPlanPacksTheStreamingKvHeads) {
  const std::shared_ptr<const AttentionPlan> plan = Plan(Duo(16, 32), 40);
  ASSERT_NE(plan, nullptr);
  EXPECT_EQ(plan->windowed_kv_heads().size(), 90u - 2);
  EXPECT_EQ(plan->kv_head_window().sink_tokens, 16);
  EXPECT_EQ(plan->kv_head_window().window_tokens, 32);
  for (int32_t kept : {3 * 3 + 0, 10 * 3 + 0}) {
    EXPECT_EQ(std::count(plan->windowed_kv_heads().begin(), plan->windowed_kv_heads().end(), kept), 0) << kept;
  }
  // One streaming query head in a group keeps the group whole.
  PolicySpec one;
  one.mode = DuoSpec{{{0, 0}}, {}, {}};
  EXPECT_EQ(Plan(one, 40)->windowed_kv_heads().size(), 90u - 1);
}

TEST_F(EnginePolicyTest, DuoHoldsTheRetrievalHeadsShareOfThePages) {
  constexpr int32_t kTokens = 160;
  EngineOptions small_steps;
  small_steps.max_num_batched_tokens = 16;  // the prompt in chunks, slices given back between them
  Metrics metrics;
  std::unique_ptr<Engine> engine = MakeEngine(small_steps, &metrics);
  const PolicySpec duo = Duo(16, 32);
  const GenerationRequest r = Greedy(kPrompt, kTokens, &duo);
  const auto [out, max_pages] = RunWatchingPages(*engine, r);
  EXPECT_EQ(out.completion_tokens, kTokens);
  EXPECT_EQ(out.token_ids, BackendGreedy(r, kTokens, 16)) << "packing by head changes no key a head sees";
  EXPECT_NE(out.token_ids, BackendGreedy(Greedy(kPrompt, kTokens), kTokens));
  // A dense sequence ends with ceil(total / 16) pages. Packed: 2 of 90 KV
  // heads keep every block, 88 keep a sink block and the 32-token window
  // over a 16-token step (at most 4 blocks), rounded up to whole pages.
  const int32_t total = static_cast<int32_t>(r.prompt_ids.size()) + kTokens;
  const int32_t blocks = (total + 15) / 16;
  EXPECT_GT(max_pages, 0);
  EXPECT_LE(max_pages, (2 * blocks + 88 * 5 + 89) / 90);
  EXPECT_LT(max_pages * 2, blocks);
  EXPECT_EQ(engine->stats().kv_pages_used, 0);
  // The 88 streaming KV heads gave back every block past the sink's that the
  // last query's window no longer reached.
  const double freed = CounterValue(metrics, "attnserve_kv_evicted_head_slices_total");
  EXPECT_EQ(freed, 88.0 * (((total - 1) - 32 + 1) / 16 - 1));
}

TEST_F(EnginePolicyTest, DuoSequencesSurvivePreemption) {
  ExpectSurvivesPreemption(Duo(16, 32), {kPrompt, std::string(kPrompt) + " old maps", "The keeper's log:"}, 48, 6);
}

TEST_F(EnginePolicyTest, DuoCompletionsEachPrefillTheirOwnPrompt) {
  std::unique_ptr<Engine> engine = MakeEngine();
  const PolicySpec duo = Duo(16, 32);
  GenerationRequest r = Greedy(kPrompt, 20, &duo);
  r.sampling.n = 3;
  Collector c;
  ASSERT_TRUE(engine->Submit(r, c.stream).ok());
  const std::vector<GenerationDelta> outs = c.Wait();
  ASSERT_EQ(outs.size(), 3u);
  for (const GenerationDelta& o : outs) EXPECT_EQ(o.token_ids, outs[0].token_ids) << o.error;
  EXPECT_EQ(outs[0].cached_prompt_tokens, 0);
}

}  // namespace
}  // namespace attnserve
