#include "engine/scheduler/scheduler.h"

#include <memory>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace attnserve {
namespace {

constexpr int32_t kPage = 4;

struct Fixture {
  explicit Fixture(int32_t pages, int32_t max_seqs = 8, int32_t budget = 16)
      : allocator(pages), cache(allocator, kPage), scheduler({max_seqs, budget, kPage}, allocator, cache) {}

  SchedSeq* Add(int32_t prompt_tokens, int32_t priority = 0, int32_t first_token = 0) {
    auto s = std::make_unique<SchedSeq>();
    s->tokens.resize(prompt_tokens);
    std::iota(s->tokens.begin(), s->tokens.end(), first_token);
    s->priority = priority;
    s->arrival_order = next_arrival++;
    seqs.push_back(std::move(s));
    scheduler.AddWaiting(seqs.back().get());
    return seqs.back().get();
  }

  // What the engine does after a step: K/V written, a token sampled when the
  // chunk reached the end.
  void Complete(const ScheduleOutput& out) {
    for (const ScheduledChunk& c : out.chunks) {
      c.seq->num_computed += c.num_tokens;
      c.seq->pages.num_tokens = c.seq->num_computed;
      cache.Insert(std::span<const int32_t>(c.seq->tokens).first(c.seq->num_computed), c.seq->pages.pages,
                   c.seq->cache_salt);
      if (c.seq->num_computed == static_cast<int32_t>(c.seq->tokens.size())) c.seq->tokens.push_back(7);
    }
  }

  PageAllocator allocator;
  PrefixCache cache;
  Scheduler scheduler;
  std::vector<std::unique_ptr<SchedSeq>> seqs;
  uint64_t next_arrival = 0;
};

TEST(SchedulerTest, AdmitsByPriorityThenArrival) {
  Fixture f(64, /*max_seqs=*/2);
  SchedSeq* low = f.Add(3, 0);
  SchedSeq* high = f.Add(3, 5);
  SchedSeq* low2 = f.Add(3, 0);
  const ScheduleOutput out = f.scheduler.Schedule();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[0].seq, high);
  EXPECT_EQ(out.chunks[1].seq, low);
  EXPECT_EQ(f.scheduler.num_waiting(), 1);
  (void)low2;
}

TEST(SchedulerTest, ChunksLongPromptsWithinTheTokenBudgetAndMixesDecodes) {
  Fixture f(64, 8, /*budget=*/10);
  SchedSeq* a = f.Add(3);
  ScheduleOutput out = f.scheduler.Schedule();
  f.Complete(out);  // a is now decoding
  SchedSeq* b = f.Add(25, 0, 100);
  out = f.scheduler.Schedule();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[0].seq, a);
  EXPECT_EQ(out.chunks[0].num_tokens, 1);
  EXPECT_EQ(out.chunks[1].seq, b);
  EXPECT_EQ(out.chunks[1].num_tokens, 9);
  f.Complete(out);
  out = f.scheduler.Schedule();
  EXPECT_EQ(out.chunks[1].num_tokens, 9);
  f.Complete(out);
  out = f.scheduler.Schedule();
  EXPECT_EQ(out.chunks[1].num_tokens, 7);  // the rest of the 25
}

TEST(SchedulerTest, PreemptsTheLowestPriorityLatestSequenceWhenPagesRunOut) {
  Fixture f(/*pages=*/4, 8, 64);
  SchedSeq* first = f.Add(8, 1);
  SchedSeq* second = f.Add(8, 0, 100);
  ScheduleOutput out = f.scheduler.Schedule();
  ASSERT_EQ(out.chunks.size(), 2u);  // 2 pages each: the pool is full
  f.Complete(out);                   // both need a third page for token 9
  out = f.scheduler.Schedule();
  ASSERT_EQ(out.preempted.size(), 1u);
  EXPECT_EQ(out.preempted[0], second);
  EXPECT_EQ(second->num_computed, 0);
  EXPECT_TRUE(second->pages.pages.empty());
  ASSERT_EQ(out.chunks.size(), 1u);
  EXPECT_EQ(out.chunks[0].seq, first);
  EXPECT_EQ(f.scheduler.num_waiting(), 1);
}

TEST(SchedulerTest, ASequenceThatCannotFitEvenAloneIsReported) {
  Fixture f(/*pages=*/2, 8, 64);
  SchedSeq* s = f.Add(8);
  f.Complete(f.scheduler.Schedule());  // 8 tokens in 2 pages, token 9 needs a third
  const ScheduleOutput out = f.scheduler.Schedule();
  ASSERT_EQ(out.out_of_memory.size(), 1u);
  EXPECT_EQ(out.out_of_memory[0], s);
  f.scheduler.Remove(s);
  EXPECT_EQ(f.allocator.num_free() + f.cache.num_cached(), 2);
}

TEST(SchedulerTest, PrefixCacheSharesFullPagesOfAnEqualPromptWithTheSameSalt) {
  Fixture f(64);
  SchedSeq* a = f.Add(10);
  f.Complete(f.scheduler.Schedule());
  SchedSeq* b = f.Add(10);
  SchedSeq* other_salt = f.Add(10);
  other_salt->cache_salt = 99;
  const ScheduleOutput out = f.scheduler.Schedule();
  EXPECT_EQ(b->cached_tokens, 8);  // two full pages of 4
  EXPECT_EQ(b->pages.pages[0], a->pages.pages[0]);
  EXPECT_EQ(b->pages.pages[1], a->pages.pages[1]);
  EXPECT_EQ(other_salt->cached_tokens, 0);
  EXPECT_EQ(out.prefix_cache_hit_tokens, 8);
  EXPECT_EQ(out.prefix_cache_queried_tokens, 20);
}

TEST(SchedulerTest, CachedPagesAreEvictedWhenTheAllocatorIsDry) {
  Fixture f(/*pages=*/3, 8, 64);
  SchedSeq* a = f.Add(8);
  f.Complete(f.scheduler.Schedule());
  f.scheduler.Remove(a);  // its 2 full pages stay cached, ref count 1
  EXPECT_EQ(f.cache.num_cached(), 2);
  EXPECT_EQ(f.cache.num_available(), 3);
  SchedSeq* b = f.Add(11, 0, 500);  // different tokens: needs all 3 pages
  const ScheduleOutput out = f.scheduler.Schedule();
  ASSERT_EQ(out.chunks.size(), 1u);
  EXPECT_EQ(b->pages.pages.size(), 3u);
  EXPECT_EQ(f.cache.num_cached(), 0);
}

// ACT prefills its whole prompt in one step: over the budget and max_chunk,
// next to the running sequences' decodes; its later chunks are normal.
TEST(SchedulerTest, MinFirstChunkCoversTheWholePromptOverTheBudget) {
  Fixture f(64, /*max_seqs=*/8, /*budget=*/16);
  SchedSeq* running = f.Add(4);
  f.Complete(f.scheduler.Schedule());
  SchedSeq* act = f.Add(40, 0, 100);
  act->max_chunk = 8;
  act->min_first_chunk = 40;
  SchedSeq* after = f.Add(4, 0, 200);
  const ScheduleOutput out = f.scheduler.Schedule();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[0].seq, running);
  EXPECT_EQ(out.chunks[1].seq, act);
  EXPECT_EQ(out.chunks[1].num_tokens, 40);
  EXPECT_EQ(f.scheduler.num_waiting(), 1) << "the budget is spent";
  f.Complete(out);
  // Recomputed after a preemption with its sets known: chunks as usual.
  act->min_first_chunk = 0;
  act->num_computed = 0;
  const ScheduleOutput next = f.scheduler.Schedule();
  for (const ScheduledChunk& c : next.chunks) {
    if (c.seq == act) {
      EXPECT_EQ(c.num_tokens, 8);
    }
  }
  (void)after;
}

}  // namespace
}  // namespace attnserve
