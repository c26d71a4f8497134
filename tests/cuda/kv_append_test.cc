// AppendKvCuda against the CPU's WriteKv: the same steps (chunks that cross
// page boundaries, several sequences, a table packed by head, a block
// rewritten from its first slot), written to layer 1 through views of layer
// 0, leave the same keys, values and key bounds in the pool, byte for byte;
// on the GPU, and on the host under the emulator (every machine). GPU cases
// skip without a device; argument checks run everywhere.
#include "tests/cuda_emu/device_shims.h"  // first: the kernels compile for the emulator
#include "kernels/cuda/kv_append_kernels.cuh"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "engine/kv/kv_cache.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_memory.h"

namespace attnserve {
namespace {

constexpr KvCacheShape kShape{2, 3, 64, 16};  // 2 layers, 3 KV heads, head_dim 64, pages of 16
constexpr int32_t kPoolPages = 40;
constexpr int32_t kLayer = 1;

// The kernels' pool (device memory, or the emulator's): keys, values and
// bounds of every layer, as the host's; and the memory of each step's
// arguments.
struct KernelPool {
  KernelBackend backend;
  KernelMemory memory;
  fp16_t *keys, *values, *key_min, *key_max;
  int64_t kv_elements, bound_elements;

  KernelPool(KernelBackend backend, KvCachePool& pool)
      : backend(backend),
        memory(backend),
        kv_elements(static_cast<int64_t>(kShape.n_layers) * pool.num_pages() * pool.page_elements()),
        bound_elements(static_cast<int64_t>(kShape.n_layers) * pool.num_pages() * kShape.n_kv_heads *
                       kShape.head_dim) {
    const auto copy = [&](const fp16_t* host, int64_t n) { return memory.Upload(std::vector<fp16_t>(host, host + n)); };
    keys = copy(pool.keys(0), kv_elements);
    values = copy(pool.values(0), kv_elements);
    key_min = copy(pool.key_min(0), bound_elements);
    key_max = copy(pool.key_max(0), bound_elements);
  }

  // The host view of a layer, moved onto this pool's memory.
  PagedKv Moved(KvCachePool& pool, const PagedKv& host, const int32_t* table) const {
    PagedKv kv = host;
    kv.keys = keys + (host.keys - pool.keys(0));
    kv.values = values + (host.values - pool.values(0));
    kv.key_min = key_min + (host.key_min - pool.key_min(0));
    kv.key_max = key_max + (host.key_max - pool.key_max(0));
    if (host.head_slices != nullptr) {
      kv.head_slices = table;
    } else {
      kv.page_table = table;
    }
    return kv;
  }

  void ExpectEquals(KvCachePool& pool) {
    const auto expect = [&](const fp16_t* kernels, const fp16_t* want, int64_t n, const char* what) {
      const std::vector<fp16_t> got = memory.Download(kernels, n);
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

absl::Status Run(KernelBackend backend, const KvAppendArgs& a) {
  if (backend == KernelBackend::kEmulator) return RunAppendKv(a, emu::Launcher{});
  if (absl::Status s = AppendKvCuda(a, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

// One step: each sequence appends `n` rows at its current length, on the
// host through WriteKv and in the kernels' pool through AppendKvCuda.
void Step(KvCachePool& pool, KernelPool& kernels, std::vector<PageTable*>& tables, const std::vector<int32_t>& firsts,
          const std::vector<int32_t>& counts, std::mt19937& rng) {
  const int width = kShape.n_kv_heads * kShape.head_dim;
  std::normal_distribution<float> normal;
  std::vector<float> k, v;
  std::vector<int32_t> row_seq;
  std::vector<KvAppendSequence> seqs;
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
    KvAppendSequence s;
    s.kv = kernels.Moved(pool, host, kernels.memory.Upload(table));
    s.first_pos = firsts[i];
    s.row_begin = row_begin;
    s.n_tokens = counts[i];
    seqs.push_back(s);
    max_blocks = std::max(max_blocks, BlocksTouched(firsts[i], counts[i], kShape.page_size));
  }
  KvAppendArgs a;
  a.seqs = kernels.memory.Upload(seqs);
  a.n_seqs = static_cast<int32_t>(seqs.size());
  a.layer = kLayer;
  a.row_seq = kernels.memory.Upload(row_seq);
  a.n_rows = static_cast<int32_t>(row_seq.size());
  a.max_blocks_per_seq = max_blocks;
  a.k = kernels.memory.Upload(k);
  a.v = kernels.memory.Upload(v);
  a.n_kv_heads = kShape.n_kv_heads;
  a.head_dim = kShape.head_dim;
  const absl::Status s = Run(kernels.backend, a);
  ASSERT_TRUE(s.ok()) << s;
}

class AppendKvCudaTest : public ::testing::TestWithParam<KernelBackend> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(GetParam()); }
};

TEST_P(AppendKvCudaTest, WritesWhatWriteKvWrites) {
  KvCachePool pool = KvCachePool::Create(kShape, kPoolPages).value();
  KernelPool kernels(GetParam(), pool);
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
    Step(pool, kernels, tables, {na, nb}, {ca, cb}, rng);
    na += ca;
    nb += cb;
    kernels.ExpectEquals(pool);
  }
  // A recompute rewrites a from its first block: the bounds are the new keys'.
  Step(pool, kernels, tables, {0, nb}, {20, 1}, rng);
  kernels.ExpectEquals(pool);
}

INSTANTIATE_TEST_SUITE_P(Backends, AppendKvCudaTest,
                         ::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator), KernelBackendName);

TEST(AppendKvCudaArgsTest, BadArgumentsAreRejected) {
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
