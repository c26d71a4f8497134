// Host staging for the metadata of one GPU engine step (page tables,
// per-sequence policy parameters, the kernels' per-sequence structs),
// written where it will lie in a device buffer so that structs can point at
// arrays of the same step, then copied up with one memcpy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

namespace attnserve {

// Arrays laid out in a device buffer: each at the next 16 bytes (and its
// type's alignment), as the kernels' vector loads want. On its own, the
// memory a step's kernels write and read and the host neither stages nor
// copies (Quest's selected key ranges).
class DeviceScratch {
 public:
  // Starts over for a device buffer at `device_base`.
  void Reset(void* device_base) {
    base_ = reinterpret_cast<uintptr_t>(device_base);
    size_ = 0;
  }

  // The device address of room for `n` values.
  template <typename T>
  T* Allocate(size_t n) {
    constexpr size_t kAlign = alignof(T) > 16 ? alignof(T) : 16;
    const size_t offset = (size_ + kAlign - 1) / kAlign * kAlign;
    size_ = offset + n * sizeof(T);
    return reinterpret_cast<T*>(base_ + offset);
  }

  // Bytes the device buffer needs.
  size_t size() const { return size_; }

 protected:
  uintptr_t base_ = 0;
  size_t size_ = 0;
};

// The same layout with a host copy of the bytes, written where they will
// lie and copied up with one memcpy.
class StagingArena : private DeviceScratch {
 public:
  using DeviceScratch::Reset;
  using DeviceScratch::size;

  // Room for `n` values, to be written through Staged: their device address.
  template <typename T>
  T* Allocate(size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    const size_t staged = size_;
    T* at = DeviceScratch::Allocate<T>(n);
    Reserve(size_, staged);
    return at;
  }

  // Appends `values` and returns their device address.
  template <typename T>
  T* Append(std::span<const T> values) {
    T* at = Allocate<T>(values.size());
    if (!values.empty()) std::memcpy(Staged(at), values.data(), values.size_bytes());
    return at;
  }
  template <typename T>
  T* Append(const std::vector<T>& values) {
    return Append(std::span<const T>(values));
  }
  template <typename T>
  T* Append(const T* values, int64_t n) {
    return Append(n > 0 ? std::span<const T>(values, static_cast<size_t>(n)) : std::span<const T>());
  }

  // Where to write what will be at `device` (an address Append or Allocate
  // returned), until the next Append or Allocate moves the staged bytes.
  template <typename T>
  T* Staged(T* device) {
    return reinterpret_cast<T*>(bytes_.get() + (reinterpret_cast<uintptr_t>(device) - base_));
  }

  // The staged copy of what will be at `device`.
  template <typename T>
  const T* HostView(const T* device) const {
    return reinterpret_cast<const T*>(bytes_.get() + (reinterpret_cast<uintptr_t>(device) - base_));
  }

  // The staged bytes to copy to the device buffer (size() of them).
  const uint8_t* data() const { return bytes_.get(); }

 private:
  // Room for `bytes`, the first `staged` kept. Kept across Resets and never
  // zeroed (a step stages megabytes at large batches): the padding between
  // arrays is copied but never read.
  void Reserve(size_t bytes, size_t staged) {
    if (bytes <= capacity_) return;
    const size_t capacity = std::max(bytes, 2 * capacity_);
    std::unique_ptr<uint8_t[]> grown = std::make_unique_for_overwrite<uint8_t[]>(capacity);
    if (staged > 0) std::memcpy(grown.get(), bytes_.get(), staged);
    bytes_ = std::move(grown);
    capacity_ = capacity;
  }

  std::unique_ptr<uint8_t[]> bytes_;
  size_t capacity_ = 0;
};

}  // namespace attnserve
