// Quest in the serving engine on the default model: a budget that covers
// the context is dense exactly; a small one reads fewer pages (counted in
// the metrics) and changes the continuation; only the prompt's pages are
// shared with dense requests.
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/engine_policy_fixture.h"

namespace attnserve {
namespace {

constexpr const char* kPrompt =
    "Notes from the harbour master's office, in the order they were written. The ferry was late on Monday "
    "because of fog. On Tuesday a fishing boat lost its mast in the storm and was towed in by the lifeboat. "
    "On Wednesday the new crane arrived in pieces on three lorries, and the engineers began to assemble it "
    "next to the grain silo. On Thursday the crane lifted its first container. On Friday";

PolicySpec Quest(uint32_t budget, uint32_t dense_layers = 2) {
  PolicySpec spec;
  spec.mode = SparseSpec{budget, dense_layers};
  return spec;
}

TEST_F(EnginePolicyTest, QuestWithABudgetOverTheContextIsDense) { ExpectSameAsDense(kPrompt, Quest(8192, 0), 24); }

TEST_F(EnginePolicyTest, QuestReadsItsBudgetAtDecode) {
  Metrics metrics;
  std::unique_ptr<Engine> engine = MakeEngine({}, &metrics);
  const PolicySpec quest = Quest(32);
  const GenerationRequest r = Greedy(kPrompt, 24, &quest);
  ASSERT_GT(r.prompt_ids.size(), 80u);
  Collector c;
  ASSERT_TRUE(engine->Submit(r, c.stream).ok());
  const GenerationDelta out = c.Wait()[0];
  EXPECT_EQ(out.token_ids, BackendGreedy(r, 24));
  EXPECT_NE(out.token_ids, BackendGreedy(Greedy(kPrompt, 24), 24)) << "2 pages + its own change the continuation";
  // Prefill reads every page; each decode step of the 28 sparse layers reads
  // 3 pages per KV head instead of all.
  const double read = CounterValue(metrics, "attnserve_attention_pages_read_total");
  const double visible = CounterValue(metrics, "attnserve_attention_pages_visible_total");
  EXPECT_LT(read, visible);
  const int64_t prompt_pages = (static_cast<int64_t>(r.prompt_ids.size()) - 1) / 16 + 1;
  const int64_t heads = 30 * 3;
  EXPECT_LE(read, static_cast<double>(heads * prompt_pages + 23 * (2 * 3 * (prompt_pages + 2) + 28 * 3 * 3)));
}

// A recomputed sequence rewrites its pages' key bounds from their first slot.
TEST_F(EnginePolicyTest, QuestSequencesSurvivePreemption) {
  const std::vector<std::string> prompts = {kPrompt, std::string(kPrompt) + " the", "Harbour notes: the ferry"};
  ExpectSurvivesPreemption(Quest(32), prompts, 60, 14);  // 3 sequences need ~24 pages
}

TEST_F(EnginePolicyTest, QuestSharesOnlyItsPromptWithDense) {
  std::unique_ptr<Engine> engine = MakeEngine();
  const PolicySpec quest = Quest(32);
  Collector c;
  ASSERT_TRUE(engine->Submit(Greedy(kPrompt, 40, &quest), c.stream).ok());
  const GenerationDelta sparse = c.Wait()[0];
  // A dense request over the prompt and Quest's continuation finds the
  // prompt's pages cached, not those Quest's decode wrote.
  GenerationRequest dense = Greedy(kPrompt, 1);
  const int32_t prompt = static_cast<int32_t>(dense.prompt_ids.size());
  dense.prompt_ids.insert(dense.prompt_ids.end(), sparse.token_ids.begin(), sparse.token_ids.end());
  Collector d;
  ASSERT_TRUE(engine->Submit(dense, d.stream).ok());
  EXPECT_EQ(d.Wait()[0].cached_prompt_tokens, prompt / 16 * 16);
}

}  // namespace
}  // namespace attnserve
