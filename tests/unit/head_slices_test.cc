// Page tables packed by head (HeadSlices): the bookkeeping that lets
// DuoAttention's streaming KV heads give their old K/V back while the other
// heads keep every block.
#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "engine/kv/kv_cache.h"
#include "gtest/gtest.h"
#include "kernels/common/half.h"

namespace attnserve {
namespace {

// 3 layers x 2 KV heads = 6 slices a page; pages of 4 tokens.
constexpr KvCacheShape kShape{3, 2, 8, 4};
constexpr int32_t kHeads = 6;

// Grows the table the way the scheduler does: PagesNeeded pages, then slices.
void Grow(PageTable& table, PageAllocator& allocator, int32_t num_tokens, int32_t next_query_pos) {
  const int32_t needed = PagesNeeded(table, num_tokens, next_query_pos, kShape.page_size);
  while (static_cast<int32_t>(table.pages.size()) < needed) table.pages.push_back(*allocator.Allocate());
  ASSERT_TRUE(AssignSlices(table, num_tokens, kShape.page_size).ok());
}

// Every live slice is in one of the table's pages and used once.
void ExpectSlicesAreTheTablesOwn(const PageTable& table, int32_t pool_pages) {
  std::set<int32_t> pages(table.pages.begin(), table.pages.end());
  std::set<int32_t> seen;
  for (int32_t s : table.slices.table) {
    if (s == kReleasedPage) continue;
    const int32_t page = (s / kShape.n_kv_heads) % pool_pages;
    EXPECT_TRUE(pages.count(page)) << "slice " << s << " is in page " << page << ", not the table's";
    EXPECT_TRUE(seen.insert(s).second) << "slice " << s << " used twice";
  }
  for (int32_t s : table.slices.free) EXPECT_FALSE(seen.count(s)) << "free slice " << s << " is in use";
}

TEST(HeadSlicesTest, UnpackedTablesNeedAPagePerBlock) {
  const PageTable table;
  EXPECT_FALSE(table.packed());
  EXPECT_EQ(PagesNeeded(table, 0, 0, 4), 0);
  EXPECT_EQ(PagesNeeded(table, 9, 9, 4), 3);
  PageTable copy = table;
  EXPECT_TRUE(AssignSlices(copy, 9, 4).ok());
  EXPECT_TRUE(copy.slices.table.empty());
}

TEST(HeadSlicesTest, WindowedHeadsFreeTheirSlicesAndBoundThePages) {
  const int32_t pool_pages = 64;
  PageAllocator allocator(pool_pages);
  // Heads 1 and 4 see 4 sink tokens and the last 8; the other 4 see everything.
  PageTable table = PackedPageTable(kShape, pool_pages, {4, 1}, VisibleSet{4, 8});
  ASSERT_TRUE(table.packed());
  EXPECT_EQ(table.slices.windowed_heads, (std::vector<int32_t>{1, 4}));
  int32_t num_computed = 0;
  size_t peak_pages = 0;
  for (const int32_t chunk : {10, 1, 1, 3, 1, 7, 1, 1, 1, 20, 1, 1, 1, 1, 30, 1}) {
    Grow(table, allocator, num_computed + chunk, num_computed);
    num_computed += chunk;
    ReleaseWindowedSlices(table, num_computed, kShape.page_size);
    ExpectSlicesAreTheTablesOwn(table, pool_pages);
    peak_pages = std::max(peak_pages, table.pages.size());
    const int32_t blocks = (num_computed + 3) / 4;
    ASSERT_EQ(static_cast<int32_t>(table.slices.table.size()), blocks * kHeads);
    for (int32_t b = 0; b < blocks; ++b) {
      for (int32_t h = 0; h < kHeads; ++h) {
        const bool windowed = h == 1 || h == 4;
        // A windowed head keeps its sink block and the blocks the next query's window reaches.
        const bool seen_later = b == 0 || (b + 1) * 4 - 1 > num_computed - 8;
        const bool held = table.slices.table[b * kHeads + h] != kReleasedPage;
        EXPECT_EQ(held, !windowed || seen_later) << "block " << b << " head " << h << " at " << num_computed;
      }
    }
  }
  // 81 tokens = 21 blocks; 4 heads keep all of them, 2 keep the sink block
  // and the window's: fewer pages than the 21 of an unpacked table.
  EXPECT_EQ(num_computed, 81);
  EXPECT_LT(peak_pages, 21u);
  EXPECT_GE(peak_pages * kHeads, 21u * 4 + 2 * 4);
  ReleasePages(table, allocator);
  EXPECT_EQ(allocator.num_free(), pool_pages);
  EXPECT_TRUE(table.packed());
  EXPECT_TRUE(table.slices.table.empty() && table.slices.free.empty());
}

TEST(HeadSlicesTest, TooFewPagesIsAnErrorThatChangesNothing) {
  PageAllocator allocator(8);
  PageTable table = PackedPageTable(kShape, 8, {0}, VisibleSet{0, 4});
  table.pages.push_back(*allocator.Allocate());
  ASSERT_TRUE(AssignSlices(table, 4, 4).ok());  // one block: one page's 6 slices
  const absl::Status full = AssignSlices(table, 5, 4);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(table.slices.table.size(), 6u);
  EXPECT_TRUE(table.slices.free.empty());
}

TEST(HeadSlicesTest, WriteAndReadBackEveryLayerAndHead) {
  const int32_t pool_pages = 16;
  absl::StatusOr<KvCachePool> pool = KvCachePool::Create(kShape, pool_pages);
  ASSERT_TRUE(pool.ok());
  PageAllocator allocator(pool_pages);
  allocator.Allocate().IgnoreError();  // the table's pages do not start at 0
  PageTable table = PackedPageTable(kShape, pool_pages, {0, 3, 5}, VisibleSet{2, 5});
  const int32_t n = 23;
  const int32_t row = kShape.n_kv_heads * kShape.head_dim;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  // [layer][token][row]
  std::vector<float> k(kShape.n_layers * n * row), v(k.size());
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  int32_t done = 0;
  for (const int32_t chunk : {7, 1, 1, 9, 5}) {
    Grow(table, allocator, done + chunk, done);
    for (int32_t l = 0; l < kShape.n_layers; ++l) {
      WriteKv(*pool, l, table, done, chunk, &k[(l * n + done) * row], &v[(l * n + done) * row]);
    }
    done += chunk;
    table.num_tokens = done;
    ReleaseWindowedSlices(table, done, kShape.page_size);
    // What every head still holds reads back as written, through the kernels' view.
    for (int32_t l = 0; l < kShape.n_layers; ++l) {
      const PagedKv kv = LayerView(*pool, l, table, done);
      for (int32_t g = 0; g < kShape.n_kv_heads; ++g) {
        for (int32_t t = 0; t < done; ++t) {
          if (kv.Slice(g, t / kShape.page_size) == kReleasedPage) continue;
          const fp16_t* key = kv.Row(kv.keys, g, t);
          const fp16_t* value = kv.Row(kv.values, g, t);
          for (int32_t c = 0; c < kShape.head_dim; ++c) {
            const int64_t at = (static_cast<int64_t>(l) * n + t) * row + g * kShape.head_dim + c;
            ASSERT_EQ(key[c], FloatToFp16(k[at])) << l << " " << g << " " << t;
            ASSERT_EQ(value[c], FloatToFp16(v[at])) << l << " " << g << " " << t;
          }
        }
      }
    }
  }
  // Windowed head 5 (layer 2, KV head 1) keeps its sink block and the last 5 tokens' blocks.
  const PagedKv last = LayerView(*pool, 2, table, done);
  EXPECT_NE(last.Slice(1, 0), kReleasedPage);
  EXPECT_EQ(last.Slice(1, 1), kReleasedPage);
  EXPECT_NE(last.Slice(1, 5), kReleasedPage);
  EXPECT_NE(last.Slice(0, 1), kReleasedPage);  // head 4 sees everything
}

}  // namespace
}  // namespace attnserve
