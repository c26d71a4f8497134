#include "engine/kv/prefix_cache.h"

#include "absl/status/status.h"
#include "engine/common/hash.h"

namespace attnserve {

PrefixCache::PrefixCache(PageAllocator& allocator, int32_t page_size)
    : allocator_(allocator), page_size_(page_size) {}

uint64_t PrefixCache::PageKey(uint64_t parent, std::span<const int32_t> page_tokens, uint64_t salt) const {
  uint64_t h = Mix64(parent ^ Mix64(salt));
  for (int32_t t : page_tokens) h = Mix64(h ^ static_cast<uint32_t>(t));
  return h;
}

std::vector<int32_t> PrefixCache::Lookup(std::span<const int32_t> tokens, uint64_t salt, int32_t max_pages) {
  std::vector<int32_t> pages;
  uint64_t key = 0;
  const int32_t full = static_cast<int32_t>(tokens.size()) / page_size_;
  for (int32_t i = 0; i < full && i < max_pages; ++i) {
    key = PageKey(key, tokens.subspan(static_cast<size_t>(i) * page_size_, page_size_), salt);
    auto it = entries_.find(key);
    if (it == entries_.end()) break;
    allocator_.AddRef(it->second.page);
    lru_.splice(lru_.end(), lru_, it->second.lru);
    pages.push_back(it->second.page);
  }
  return pages;
}

void PrefixCache::Insert(std::span<const int32_t> tokens, std::span<const int32_t> pages, uint64_t salt) {
  uint64_t key = 0;
  const size_t full = std::min(tokens.size() / page_size_, pages.size());
  for (size_t i = 0; i < full; ++i) {
    key = PageKey(key, tokens.subspan(i * page_size_, page_size_), salt);
    const int32_t page = pages[i];
    if (page == kReleasedPage || entries_.count(key) != 0 || key_of_page_.count(page) != 0) continue;
    allocator_.AddRef(page);
    lru_.push_back(page);
    entries_.emplace(key, Entry{key, page, std::prev(lru_.end())});
    key_of_page_.emplace(page, key);
  }
}

absl::StatusOr<int32_t> PrefixCache::Allocate() {
  if (allocator_.num_free() > 0) return allocator_.Allocate();
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    const int32_t page = *it;
    if (allocator_.ref_count(page) != 1) continue;  // a sequence still reads it
    const uint64_t key = key_of_page_.at(page);
    entries_.erase(key);
    key_of_page_.erase(page);
    lru_.erase(it);
    allocator_.Release(page);
    return allocator_.Allocate();
  }
  return absl::ResourceExhaustedError("kv cache: no free page");
}

int32_t PrefixCache::num_available() const {
  int32_t n = allocator_.num_free();
  for (int32_t page : lru_) n += allocator_.ref_count(page) == 1 ? 1 : 0;
  return n;
}

}  // namespace attnserve
