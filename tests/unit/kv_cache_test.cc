#include "engine/kv/kv_cache.h"

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/common/half.h"

namespace attnserve {
namespace {

TEST(PageAllocatorTest, AllocatesInOrderAndCountsReferences) {
  PageAllocator a(3);
  EXPECT_EQ(a.num_pages(), 3);
  EXPECT_EQ(a.num_free(), 3);
  EXPECT_EQ(*a.Allocate(), 0);
  EXPECT_EQ(*a.Allocate(), 1);
  EXPECT_EQ(a.ref_count(1), 1);
  a.AddRef(1);
  EXPECT_EQ(a.ref_count(1), 2);
  a.Release(1);
  EXPECT_EQ(a.ref_count(1), 1);
  EXPECT_EQ(a.num_free(), 1);
  a.Release(1);
  EXPECT_EQ(a.ref_count(1), 0);
  EXPECT_EQ(a.num_free(), 2);
  // LIFO: the page freed last comes back first.
  EXPECT_EQ(*a.Allocate(), 1);
}

TEST(PageAllocatorTest, ExhaustionIsAnError) {
  PageAllocator a(2);
  ASSERT_TRUE(a.Allocate().ok());
  ASSERT_TRUE(a.Allocate().ok());
  const absl::StatusOr<int32_t> page = a.Allocate();
  EXPECT_EQ(page.status().code(), absl::StatusCode::kResourceExhausted);
  a.Release(0);
  EXPECT_EQ(*a.Allocate(), 0);
}

#ifdef NDEBUG
// Release builds ignore misuse instead of corrupting the free list.
TEST(PageAllocatorTest, MisuseIsIgnored) {
  PageAllocator a(2);
  const int32_t p = *a.Allocate();
  a.Release(p);
  a.Release(p);  // double free
  a.AddRef(1);   // never allocated
  a.Release(7);  // out of range
  EXPECT_EQ(a.num_free(), 2);
  EXPECT_EQ(a.ref_count(1), 0);
  EXPECT_NE(*a.Allocate(), *a.Allocate());
  EXPECT_FALSE(a.Allocate().ok());
}
#else
TEST(PageAllocatorDeathTest, MisuseAsserts) {
  PageAllocator a(2);
  const int32_t p = *a.Allocate();
  a.Release(p);
  EXPECT_DEATH(a.Release(p), "not allocated");
  EXPECT_DEATH(a.AddRef(1), "not allocated");
}
#endif

TEST(ReservePagesTest, AllOrNothing) {
  PageAllocator a(5);
  PageTable t1, t2;
  ASSERT_TRUE(ReservePages(t1, 33, 16, a).ok());  // 3 pages
  EXPECT_EQ(t1.pages.size(), 3u);
  EXPECT_EQ(a.num_free(), 2);
  ASSERT_TRUE(ReservePages(t1, 48, 16, a).ok());  // still 3 pages
  EXPECT_EQ(t1.pages.size(), 3u);

  ASSERT_TRUE(ReservePages(t2, 16, 16, a).ok());
  const absl::Status s = ReservePages(t2, 16 * 3, 16, a);  // needs 2 more, 1 free
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(t2.pages.size(), 1u);
  EXPECT_EQ(a.num_free(), 1);

  EXPECT_EQ(ReservePages(t2, 10, 0, a).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReservePagesTest, ReleaseKeepsSharedPages) {
  PageAllocator a(4);
  PageTable t1, t2;
  ASSERT_TRUE(ReservePages(t1, 20, 16, a).ok());
  // t2 shares t1's first page, as a prefix-cache hit would.
  a.AddRef(t1.pages[0]);
  t2.pages.push_back(t1.pages[0]);
  ASSERT_TRUE(ReservePages(t2, 17, 16, a).ok());
  t1.num_tokens = 20;
  ReleasePages(t1, a);
  EXPECT_TRUE(t1.pages.empty());
  EXPECT_EQ(t1.num_tokens, 0);
  EXPECT_EQ(a.ref_count(t2.pages[0]), 1);
  EXPECT_EQ(a.num_free(), 2);
  ReleasePages(t2, a);
  EXPECT_EQ(a.num_free(), 4);
}

TEST(KvCachePoolTest, ShapeAndSizes) {
  const KvCacheShape shape{3, 2, 8, 4};
  absl::StatusOr<KvCachePool> pool = KvCachePool::Create(shape, 5);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->num_pages(), 5);
  EXPECT_EQ(pool->page_elements(), 2 * 4 * 8);
  // Per layer: keys and values of 2 heads x 4 slots x 8 dims, and each
  // head's key min and max (8 dims each), in fp16.
  EXPECT_EQ(pool->bytes_per_page(), 3 * (2 * 64 + 2 * 2 * 8) * 2);
  EXPECT_EQ(pool->keys(1) - pool->keys(0), 5 * 64);
  EXPECT_EQ(pool->values(2) - pool->values(0), 2 * 5 * 64);
}

TEST(KvCachePoolTest, ScratchPagesFollowEachLayersPages) {
  const KvCacheShape shape{3, 2, 8, 4};
  size_t allocated = 0;
  std::vector<fp16_t> memory;
  const KvCachePool::Allocator host = [&](size_t elements) -> absl::StatusOr<std::shared_ptr<fp16_t>> {
    allocated = elements;
    memory.assign(elements, fp16_t{});
    return std::shared_ptr<fp16_t>(memory.data(), [](fp16_t*) {});
  };
  absl::StatusOr<KvCachePool> pool = KvCachePool::Create(shape, 5, host, false, 2);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->num_pages(), 5);
  EXPECT_EQ(pool->scratch_pages(), 2);
  EXPECT_EQ(pool->scratch_page(1), 6);
  EXPECT_EQ(pool->layer_pages(), 7);
  EXPECT_EQ(allocated * sizeof(fp16_t), static_cast<size_t>(7 * pool->bytes_per_page()));
  // Layer 1's keys start past layer 0's scratch pages; the last part ends
  // with the memory.
  EXPECT_EQ(pool->keys(1) - pool->keys(0), 7 * 64);
  EXPECT_EQ(pool->key_max(2) + 7 * 2 * 8, memory.data() + memory.size());
  EXPECT_EQ(KvCachePool::Create(shape, 5, host, false, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvCachePoolTest, LayerZerosViewMovesToEveryLayer) {
  const KvCacheShape shape{3, 2, 8, 4};
  std::vector<fp16_t> memory;
  const KvCachePool::Allocator host = [&](size_t elements) -> absl::StatusOr<std::shared_ptr<fp16_t>> {
    memory.assign(elements, fp16_t{});
    return std::shared_ptr<fp16_t>(memory.data(), [](fp16_t*) {});
  };
  KvCachePool pool = KvCachePool::Create(shape, 6, host, false, 3).value();
  PageTable plain;
  plain.pages = {4, 1};
  PageTable packed = PackedPageTable(shape, pool.layer_pages(), {1, 4}, VisibleSet{2, 4});
  packed.pages = {5, 0, 2};
  ASSERT_TRUE(AssignSlices(packed, 8, shape.page_size).ok());
  for (const PageTable* table : {&plain, &packed}) {
    const PagedKv first = LayerView(pool, 0, *table, 8);
    for (int32_t l = 0; l < shape.n_layers; ++l) {
      const PagedKv want = LayerView(pool, l, *table, 8), got = first.AtLayer(l);
      EXPECT_EQ(got.keys, want.keys) << l;
      EXPECT_EQ(got.values, want.values) << l;
      EXPECT_EQ(got.key_min, want.key_min) << l;
      EXPECT_EQ(got.key_max, want.key_max) << l;
      EXPECT_EQ(got.head_slices, want.head_slices) << l;
      for (int32_t g = 0; g < shape.n_kv_heads; ++g) {
        EXPECT_EQ(got.Row(got.keys, g, 6), want.Row(want.keys, g, 6)) << l << " " << g;
      }
    }
  }
}

TEST(KvCachePoolTest, RejectsBadShapesAndAbsurdSizes) {
  EXPECT_EQ(KvCachePool::Create({0, 2, 8, 4}, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvCachePool::Create({1, 2, 8, 0}, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvCachePool::Create({1, 2, 8, 4}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvCachePool::Create({1 << 20, 64, 128, 16}, 1 << 30).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(KvCacheTest, WriteAndReadBackThroughLayerView) {
  const KvCacheShape shape{2, 3, 10, 4};
  absl::StatusOr<KvCachePool> pool_or = KvCachePool::Create(shape, 8);
  ASSERT_TRUE(pool_or.ok());
  KvCachePool& pool = *pool_or;
  PageAllocator a(8);
  // Scatter the sequence's pages: allocate some, give back every other one.
  std::vector<int32_t> held;
  for (int i = 0; i < 6; ++i) held.push_back(*a.Allocate());
  for (int i = 0; i < 6; i += 2) a.Release(held[i]);
  PageTable table;
  const int n = 11;
  ASSERT_TRUE(ReservePages(table, n, shape.page_size, a).ok());

  const int row = shape.n_kv_heads * shape.head_dim;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> k(n * row), v(n * row);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  // Two writes whose boundary falls inside a page, as prefill then decode.
  WriteKv(pool, 1, table, 0, 6, k.data(), v.data());
  WriteKv(pool, 1, table, 6, n - 6, k.data() + 6 * row, v.data() + 6 * row);
  table.num_tokens = n;

  const PagedKv kv = LayerView(pool, 1, table, n);
  EXPECT_EQ(kv.num_tokens, n);
  EXPECT_EQ(kv.page_size, shape.page_size);
  EXPECT_EQ(kv.n_kv_heads, shape.n_kv_heads);
  EXPECT_EQ(kv.head_dim, shape.head_dim);
  EXPECT_EQ(kv.page_table, table.pages.data());
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      for (int c = 0; c < shape.head_dim; ++c) {
        const int64_t at = ((static_cast<int64_t>(kv.page_table[t / kv.page_size]) * kv.n_kv_heads + h) *
                                kv.page_size + t % kv.page_size) * kv.head_dim + c;
        ASSERT_EQ(kv.keys[at], FloatToFp16(k[t * row + h * shape.head_dim + c]));
        ASSERT_EQ(kv.values[at], FloatToFp16(v[t * row + h * shape.head_dim + c]));
      }
    }
  }
  // Each page's key bounds: the elementwise min and max of the keys it holds
  // (the last page partly filled).
  for (int p = 0; p * shape.page_size < n; ++p) {
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      for (int c = 0; c < shape.head_dim; ++c) {
        float lo = INFINITY, hi = -INFINITY;
        for (int t = p * shape.page_size; t < std::min(n, (p + 1) * shape.page_size); ++t) {
          const float x = Fp16ToFloat(FloatToFp16(k[t * row + h * shape.head_dim + c]));
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
        const int64_t at = (static_cast<int64_t>(kv.page_table[p]) * kv.n_kv_heads + h) * kv.head_dim + c;
        ASSERT_EQ(Fp16ToFloat(kv.key_min[at]), lo) << p << " " << h << " " << c;
        ASSERT_EQ(Fp16ToFloat(kv.key_max[at]), hi) << p << " " << h << " " << c;
      }
    }
  }
  // Rewritten from a page's first slot (a recompute), the bounds are the new keys'.
  std::vector<float> small(4 * row, 0.5f);
  WriteKv(pool, 1, table, 4, 4, small.data(), small.data());
  const int64_t page1 = static_cast<int64_t>(kv.page_table[1]) * kv.n_kv_heads * kv.head_dim;
  EXPECT_EQ(Fp16ToFloat(kv.key_min[page1]), 0.5f);
  EXPECT_EQ(Fp16ToFloat(kv.key_max[page1]), 0.5f);

  // Layer 0 was never written.
  const PagedKv other = LayerView(pool, 0, table, n);
  for (int64_t i = 0; i < pool.num_pages() * pool.page_elements(); ++i) {
    ASSERT_EQ(other.keys[i], 0);
    ASSERT_EQ(other.values[i], 0);
  }
}

}  // namespace
}  // namespace attnserve
