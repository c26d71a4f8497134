// AppendKvCuda against the CPU's WriteKv: the same steps (chunks that cross
// page boundaries, several sequences, a table packed by head, a block
// rewritten from its first slot), written to layer 1 through views of layer
// 0, leave the same keys, values and key bounds in the pool, byte for byte.
// GPU cases skip without a device; argument checks run everywhere.
#include "kernels/cuda/kv_append.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "engine/kv/kv_cache.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"

namespace attnserve {
namespace {

constexpr KvCacheShape kShape{2, 3, 64, 16};  // 2 layers, 3 KV heads, head_dim 64, pages of 16
constexpr int32_t kPoolPages = 40;
constexpr int32_t kLayer = 1;

// The device pool: keys, values and bounds of every layer, as the host's.
struct DevicePool {
  DeviceBuffer keys, values, key_min, key_max;
  int64_t kv_elements, bound_elements;

  explicit DevicePool(KvCachePool& pool)
      : kv_elements(static_cast<int64_t>(kShape.n_layers) * pool.num_pages() * pool.page_elements()),
        bound_elements(static_cast<int64_t>(kShape.n_layers) * pool.num_pages() * kShape.n_kv_heads *
                       kShape.head_dim) {
    keys = Upload(pool.keys(0), kv_elements);
    values = Upload(pool.values(0), kv_elements);
    key_min = Upload(pool.key_min(0), bound_elements);
    key_max = Upload(pool.key_max(0), bound_elements);
  }

  // The host view of a layer, moved onto this pool's memory.
  PagedKv OnDevice(KvCachePool& pool, const PagedKv& host, const int32_t* d_table) const {
    PagedKv kv = host;
    const auto moved = [&](const fp16_t* p, const fp16_t* base, const DeviceBuffer& d) {
      return d.as<fp16_t>() + (p - base);
    };
    kv.keys = moved(host.keys, pool.keys(0), keys);
    kv.values = moved(host.values, pool.values(0), values);
    kv.key_min = moved(host.key_min, pool.key_min(0), key_min);
    kv.key_max = moved(host.key_max, pool.key_max(0), key_max);
    if (host.head_slices != nullptr) {
      kv.head_slices = d_table;
    } else {
      kv.page_table = d_table;
    }
    return kv;
  }

  void ExpectEquals(KvCachePool& pool) const {
    const auto expect = [](const DeviceBuffer& d, const fp16_t* want, int64_t n, const char* what) {
      std::vector<fp16_t> got(n);
      ASSERT_TRUE(d.CopyToHost(got.data(), n * sizeof(fp16_t)).ok());
      int64_t diffs = 0;
      for (int64_t i = 0; i < n; ++i) diffs += got[i] != want[i];
      EXPECT_EQ(diffs, 0) << what;
    };
    expect(keys, pool.keys(0), kv_elements, "keys");
    expect(values, pool.values(0), kv_elements, "values");
    expect(key_min, pool.key_min(0), bound_elements, "key_min");
    expect(key_max, pool.key_max(0), bound_elements, "key_max");
  }
};

// One step: each sequence appends `n` rows at its current length, on the
// host through WriteKv and on the device through AppendKvCuda.
void Step(KvCachePool& pool, DevicePool& dev, std::vector<PageTable*>& tables, const std::vector<int32_t>& firsts,
          const std::vector<int32_t>& counts, std::mt19937& rng) {
  const int width = kShape.n_kv_heads * kShape.head_dim;
  std::normal_distribution<float> normal;
  std::vector<float> k, v;
  std::vector<int32_t> row_seq;
  std::vector<KvAppendSequence> seqs;
  std::vector<DeviceBuffer> device_tables;
  int32_t max_blocks = 0;
  for (size_t i = 0; i < tables.size(); ++i) {
    PageTable& t = *tables[i];
    const int32_t row_begin = static_cast<int32_t>(row_seq.size());
    std::vector<float> ki(static_cast<size_t>(counts[i]) * width), vi(ki.size());
    for (float& x : ki) x = normal(rng);
    for (float& x : vi) x = normal(rng);
    if (t.packed()) {
      EXPECT_TRUE(AssignSlices(t, firsts[i] + counts[i], kShape.page_size).ok());
    }
    WriteKv(pool, kLayer, t, firsts[i], counts[i], ki.data(), vi.data());
    k.insert(k.end(), ki.begin(), ki.end());
    v.insert(v.end(), vi.begin(), vi.end());
    row_seq.insert(row_seq.end(), counts[i], static_cast<int32_t>(i));
    // Layer 0's view, moved to kLayer by the launch, as the backend stages it.
    const PagedKv host = LayerView(pool, 0, t, firsts[i] + counts[i]);
    const std::vector<int32_t>& table = t.packed() ? t.slices.table : t.pages;
    device_tables.push_back(Upload(table.data(), table.size()));
    KvAppendSequence s;
    s.kv = dev.OnDevice(pool, host, device_tables.back().as<int32_t>());
    s.first_pos = firsts[i];
    s.row_begin = row_begin;
    s.n_tokens = counts[i];
    seqs.push_back(s);
    max_blocks = std::max(max_blocks, BlocksTouched(firsts[i], counts[i], kShape.page_size));
  }
  DeviceBuffer d_seqs = Upload(seqs.data(), seqs.size()), d_rows = Upload(row_seq.data(), row_seq.size());
  DeviceBuffer d_k = Upload(k.data(), k.size()), d_v = Upload(v.data(), v.size());
  KvAppendArgs a;
  a.seqs = d_seqs.as<KvAppendSequence>();
  a.n_seqs = static_cast<int32_t>(seqs.size());
  a.layer = kLayer;
  a.row_seq = d_rows.as<int32_t>();
  a.n_rows = static_cast<int32_t>(row_seq.size());
  a.max_blocks_per_seq = max_blocks;
  a.k = d_k.as<float>();
  a.v = d_v.as<float>();
  a.n_kv_heads = kShape.n_kv_heads;
  a.head_dim = kShape.head_dim;
  ASSERT_TRUE(AppendKvCuda(a, nullptr).ok());
  ASSERT_TRUE(CudaStreamSync(nullptr).ok());
}

TEST(AppendKvCudaTest, WritesWhatWriteKvWrites) {
  ATTNSERVE_SKIP_WITHOUT_GPU();
  KvCachePool pool = KvCachePool::Create(kShape, kPoolPages).value();
  DevicePool dev(pool);
  PageAllocator allocator(kPoolPages);
  allocator.Allocate().IgnoreError();  // tables do not start at page 0
  PageTable a, b = PackedPageTable(kShape, kPoolPages, {1, 3, 4}, VisibleSet{16, 32});
  std::mt19937 rng(5);
  // Sequence a: an unpacked table; b: packed by head, its own pages.
  ASSERT_TRUE(ReservePages(a, 200, kShape.page_size, allocator).ok());
  for (int i = 0; i < 8; ++i) b.pages.push_back(*allocator.Allocate());
  std::vector<PageTable*> tables = {&a, &b};
  int32_t na = 0, nb = 0;
  for (const auto& [ca, cb] : std::vector<std::pair<int32_t, int32_t>>{{37, 5}, {1, 20}, {16, 1}, {9, 31}, {1, 1}}) {
    Step(pool, dev, tables, {na, nb}, {ca, cb}, rng);
    na += ca;
    nb += cb;
    dev.ExpectEquals(pool);
  }
  // A recompute rewrites a from its first block: the bounds are the new keys'.
  Step(pool, dev, tables, {0, nb}, {20, 1}, rng);
  dev.ExpectEquals(pool);
}

TEST(AppendKvCudaTest, BadArgumentsAreRejected) {
  KvAppendArgs a;
  a.n_rows = 3;
  a.n_kv_heads = 0;
  EXPECT_EQ(AppendKvCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_kv_heads = 2;
  a.head_dim = 64;
  EXPECT_EQ(AppendKvCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);  // null pointers
  a.n_rows = 0;
  EXPECT_TRUE(AppendKvCuda(a, nullptr).ok());
  EXPECT_EQ(BlocksTouched(15, 2, 16), 2);
  EXPECT_EQ(BlocksTouched(16, 16, 16), 1);
  EXPECT_EQ(BlocksTouched(3, 0, 16), 0);
}

}  // namespace
}  // namespace attnserve
