#include "engine/kv/kv_cache.h"

#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <limits>
#include <new>

#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"

namespace attnserve {
namespace {

// Physical memory: the zero fill commits every byte, so a pool
// larger than the machine could only end in the OOM killer.
int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(pages) * page_size;
}

}  // namespace

absl::StatusOr<KvCachePool> KvCachePool::Create(const KvCacheShape& shape, int32_t num_pages) {
  const Allocator host = [](size_t elements) -> absl::StatusOr<std::shared_ptr<fp16_t>> {
    const double bytes = static_cast<double>(elements) * sizeof(fp16_t);
    if (bytes > static_cast<double>(PhysicalMemoryBytes())) {
      return absl::ResourceExhaustedError(absl::StrCat("kv cache needs ", bytes, " bytes, more than the machine's memory"));
    }
    fp16_t* data = new (std::nothrow) fp16_t[elements]();
    if (data == nullptr) return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a kv cache of ", bytes, " bytes"));
    return std::shared_ptr<fp16_t>(data, std::default_delete<fp16_t[]>());
  };
  return Create(shape, num_pages, host, false);
}

absl::StatusOr<KvCachePool> KvCachePool::Create(const KvCacheShape& shape, int32_t num_pages,
                                                const Allocator& allocate, bool on_device, int32_t scratch_pages) {
  if (shape.n_layers < 1 || shape.n_kv_heads < 1 || shape.head_dim < 1 || shape.page_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv cache shape (layers ", shape.n_layers, ", kv heads ",
                                                   shape.n_kv_heads, ", head_dim ", shape.head_dim, ", page size ",
                                                   shape.page_size, ") must be positive"));
  }
  if (num_pages < 1) return absl::InvalidArgumentError(absl::StrCat("kv cache needs pages, got ", num_pages));
  if (scratch_pages < 0 || scratch_pages > std::numeric_limits<int32_t>::max() - num_pages) {
    return absl::InvalidArgumentError(absl::StrCat("kv cache scratch pages: ", scratch_pages));
  }
  // Each factor is below 2^31, so the size is checked in floating point
  // before any product could overflow int64.
  const double elements = (static_cast<double>(num_pages) + scratch_pages) * PageBytes(shape) / sizeof(fp16_t);
  if (elements > static_cast<double>(std::numeric_limits<int64_t>::max() / 4)) {
    return absl::ResourceExhaustedError(absl::StrCat("kv cache of ", num_pages, " pages is too large"));
  }
  KvCachePool pool;
  pool.shape_ = shape;
  pool.num_pages_ = num_pages;
  pool.scratch_pages_ = scratch_pages;
  pool.on_device_ = on_device;
  auto memory = allocate(static_cast<size_t>(elements));
  if (!memory.ok()) return memory.status();
  pool.memory_ = *std::move(memory);
  return pool;
}

fp16_t* KvCachePool::Part(int part, int32_t layer, int64_t layer_elements) const {
  const int64_t page_kv = static_cast<int64_t>(layer_pages()) * page_elements() * shape_.n_layers;
  const int64_t bounds = static_cast<int64_t>(layer_pages()) * shape_.n_kv_heads * shape_.head_dim * shape_.n_layers;
  const int64_t offset = part < 2 ? part * page_kv : 2 * page_kv + (part - 2) * bounds;
  return memory_.get() + offset + static_cast<int64_t>(layer) * layer_elements;
}

int64_t KvCachePool::page_elements() const {
  return static_cast<int64_t>(shape_.n_kv_heads) * shape_.page_size * shape_.head_dim;
}

int64_t KvCachePool::PageBytes(const KvCacheShape& shape) {
  const int64_t head = static_cast<int64_t>(shape.n_kv_heads) * shape.head_dim;
  return static_cast<int64_t>(shape.n_layers) * (2 * head * shape.page_size + 2 * head) *
         static_cast<int64_t>(sizeof(fp16_t));
}

fp16_t* KvCachePool::keys(int32_t layer) { return Part(0, layer, layer_pages() * page_elements()); }

fp16_t* KvCachePool::values(int32_t layer) { return Part(1, layer, layer_pages() * page_elements()); }

fp16_t* KvCachePool::key_min(int32_t layer) {
  return Part(2, layer, static_cast<int64_t>(layer_pages()) * shape_.n_kv_heads * shape_.head_dim);
}

fp16_t* KvCachePool::key_max(int32_t layer) {
  return Part(3, layer, static_cast<int64_t>(layer_pages()) * shape_.n_kv_heads * shape_.head_dim);
}

PageAllocator::PageAllocator(int32_t num_pages) : ref_counts_(num_pages, 0) {
  free_.reserve(num_pages);
  // Reversed so that a fresh allocator hands out pages 0, 1, 2, ...
  for (int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

absl::StatusOr<int32_t> PageAllocator::Allocate() {
  if (free_.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat("all ", num_pages(), " kv cache pages are in use"));
  }
  const int32_t page = free_.back();
  free_.pop_back();
  ref_counts_[page] = 1;
  return page;
}

// A reference to a free or unknown page is a caller bug; debug builds stop
// there, release builds ignore it rather than corrupt the free list.
void PageAllocator::AddRef(int32_t page) {
  const bool held = page >= 0 && page < num_pages() && ref_counts_[page] > 0;
  assert(held && "AddRef of a page that is not allocated");
  if (held) ++ref_counts_[page];
}

void PageAllocator::Release(int32_t page) {
  const bool held = page >= 0 && page < num_pages() && ref_counts_[page] > 0;
  assert(held && "Release of a page that is not allocated");
  if (!held) return;
  if (--ref_counts_[page] == 0) free_.push_back(page);
}

absl::Status ReservePages(PageTable& table, int32_t num_tokens, int32_t page_size, PageAllocator& allocator) {
  if (page_size < 1 || num_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot reserve ", num_tokens, " tokens in pages of ", page_size));
  }
  const int64_t needed = (static_cast<int64_t>(num_tokens) + page_size - 1) / page_size;
  const int64_t missing = needed - static_cast<int64_t>(table.pages.size());
  if (missing <= 0) return absl::OkStatus();
  if (missing > allocator.num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("need ", missing, " kv cache pages, ", allocator.num_free(),
                                                     " are free"));
  }
  for (int64_t i = 0; i < missing; ++i) table.pages.push_back(*allocator.Allocate());
  return absl::OkStatus();
}

void ReleasePages(PageTable& table, PageAllocator& allocator) {
  for (int32_t page : table.pages) {
    if (page != kReleasedPage) allocator.Release(page);
  }
  table.pages.clear();
  table.num_tokens = 0;
  HeadSlices& hs = table.slices;
  hs.table.clear();
  hs.free.clear();
  hs.carved_pages = 0;
  hs.released_blocks = 0;
}

int32_t ReleasePageRange(PageTable& table, PageAllocator& allocator, int32_t begin, int32_t end) {
  int32_t released = 0;
  end = std::min(end, static_cast<int32_t>(table.pages.size()));
  for (int32_t i = std::max(begin, 0); i < end; ++i) {
    if (table.pages[i] == kReleasedPage) continue;
    allocator.Release(table.pages[i]);
    table.pages[i] = kReleasedPage;
    ++released;
  }
  return released;
}

int64_t ReservedTokens(const PageTable& table, int32_t page_size) {
  const size_t blocks = table.packed() ? table.slices.table.size() / table.slices.heads : table.pages.size();
  return static_cast<int64_t>(blocks) * page_size;
}

int32_t HeldPages(const PageTable& table) {
  return static_cast<int32_t>(std::count_if(table.pages.begin(), table.pages.end(),
                                            [](int32_t page) { return page != kReleasedPage; }));
}

PageTable PackedPageTable(const KvCacheShape& shape, int32_t pool_pages, std::vector<int32_t> windowed_heads,
                          VisibleSet window) {
  PageTable table;
  HeadSlices& hs = table.slices;
  hs.heads = shape.n_layers * shape.n_kv_heads;
  hs.n_kv_heads = shape.n_kv_heads;
  hs.pool_pages = pool_pages;
  std::sort(windowed_heads.begin(), windowed_heads.end());
  hs.windowed_heads = std::move(windowed_heads);
  hs.window = window;
  return table;
}

int32_t PagesNeeded(const PageTable& table, int32_t num_tokens, int32_t next_query_pos, int32_t page_size) {
  const int64_t blocks = (static_cast<int64_t>(num_tokens) + page_size - 1) / page_size;
  if (!table.packed()) return static_cast<int32_t>(blocks);
  const HeadSlices& hs = table.slices;
  const PageRange gone = hs.window.EvictablePages(next_query_pos, page_size);
  const int64_t windowed_gone = std::max<int64_t>(0, std::min<int64_t>(gone.end, blocks) - gone.begin);
  const int64_t slices = blocks * hs.heads - windowed_gone * static_cast<int64_t>(hs.windowed_heads.size());
  return static_cast<int32_t>((slices + hs.heads - 1) / hs.heads);
}

absl::Status AssignSlices(PageTable& table, int32_t num_tokens, int32_t page_size) {
  if (!table.packed()) return absl::OkStatus();
  HeadSlices& hs = table.slices;
  const int64_t blocks = (static_cast<int64_t>(num_tokens) + page_size - 1) / page_size;
  const int64_t assigned = static_cast<int64_t>(hs.table.size()) / hs.heads;
  if (blocks <= assigned) return absl::OkStatus();
  const int64_t uncarved = static_cast<int64_t>(table.pages.size()) - hs.carved_pages;
  const int64_t available = static_cast<int64_t>(hs.free.size()) + uncarved * hs.heads;
  if (available < (blocks - assigned) * hs.heads) {
    return absl::ResourceExhaustedError(absl::StrCat("kv cache blocks [", assigned, ", ", blocks, ") need ",
                                                     (blocks - assigned) * hs.heads, " slices, the sequence's ",
                                                     table.pages.size(), " pages have ", available, " free"));
  }
  // Page p holds the slice (layer * pool_pages + p) * n_kv_heads + g of every layer and KV head.
  for (; hs.carved_pages < static_cast<int32_t>(table.pages.size()); ++hs.carved_pages) {
    const int32_t page = table.pages[hs.carved_pages];
    for (int32_t slot = hs.heads - 1; slot >= 0; --slot) {
      const int32_t layer = slot / hs.n_kv_heads, g = slot % hs.n_kv_heads;
      hs.free.push_back((layer * hs.pool_pages + page) * hs.n_kv_heads + g);
    }
  }
  for (int64_t i = assigned * hs.heads; i < blocks * hs.heads; ++i) {
    hs.table.push_back(hs.free.back());
    hs.free.pop_back();
  }
  return absl::OkStatus();
}

int32_t ReleaseWindowedSlices(PageTable& table, int32_t next_query_pos, int32_t page_size) {
  HeadSlices& hs = table.slices;
  if (!table.packed()) return 0;
  const PageRange gone = hs.window.EvictablePages(next_query_pos, page_size);
  const int32_t blocks = static_cast<int32_t>(hs.table.size() / std::max(1, hs.heads));
  const int32_t end = std::min(gone.end, blocks);
  int32_t released = 0;
  // Blocks from released_blocks on still hold every head's slice.
  for (int32_t b = std::max(gone.begin, hs.released_blocks); b < end; ++b) {
    for (int32_t h : hs.windowed_heads) {
      int32_t& slice = hs.table[static_cast<size_t>(b) * hs.heads + h];
      hs.free.push_back(slice);
      slice = kReleasedPage;
      ++released;
    }
  }
  hs.released_blocks = std::max(hs.released_blocks, end);
  return released;
}

void WriteKv(KvCachePool& pool, int32_t layer, const PageTable& table, int32_t first_pos, int32_t n_tokens,
             const float* k, const float* v) {
  assert(!pool.on_device());
  const KvCacheShape& s = pool.shape();
  const PagedKv kv = LayerView(pool, layer, table, first_pos + n_tokens);
  const int32_t base_layer = table.packed() ? 0 : layer;
  fp16_t* keys = pool.keys(base_layer);
  fp16_t* values = pool.values(base_layer);
  fp16_t* key_min = pool.key_min(base_layer);
  fp16_t* key_max = pool.key_max(base_layer);
  const int64_t row = static_cast<int64_t>(s.n_kv_heads) * s.head_dim;
  for (int32_t i = 0; i < n_tokens; ++i) {
    const int32_t t = first_pos + i;
    const bool first_slot = t % s.page_size == 0;
    for (int32_t h = 0; h < s.n_kv_heads; ++h) {
      const int64_t slice = kv.Slice(h, t / s.page_size);
      const int64_t dst = (slice * s.page_size + t % s.page_size) * s.head_dim;
      const int64_t src = i * row + static_cast<int64_t>(h) * s.head_dim;
      const int64_t bounds = slice * s.head_dim;
      for (int32_t c = 0; c < s.head_dim; ++c) {
        const fp16_t key = FloatToFp16(k[src + c]);
        keys[dst + c] = key;
        values[dst + c] = FloatToFp16(v[src + c]);
        // fp16 values compare exactly as floats.
        const float x = Fp16ToFloat(key);
        if (first_slot || x < Fp16ToFloat(key_min[bounds + c])) key_min[bounds + c] = key;
        if (first_slot || x > Fp16ToFloat(key_max[bounds + c])) key_max[bounds + c] = key;
      }
    }
  }
}

PagedKv LayerView(KvCachePool& pool, int32_t layer, const PageTable& table, int32_t num_tokens) {
  const KvCacheShape& s = pool.shape();
  // A packed table's slices are numbered across layers, from layer 0's base.
  const int32_t base_layer = table.packed() ? 0 : layer;
  PagedKv kv;
  kv.keys = pool.keys(base_layer);
  kv.values = pool.values(base_layer);
  kv.key_min = pool.key_min(base_layer);
  kv.key_max = pool.key_max(base_layer);
  kv.page_table = table.pages.data();
  if (table.packed()) {
    kv.head_slices = table.slices.table.data() + static_cast<int64_t>(layer) * s.n_kv_heads;
    kv.head_slices_step = table.slices.heads;
  }
  kv.page_size = s.page_size;
  kv.n_kv_heads = s.n_kv_heads;
  kv.head_dim = s.head_dim;
  kv.num_tokens = num_tokens;
  kv.layer_stride = pool.layer_pages() * pool.page_elements();
  return kv;
}

}  // namespace attnserve
