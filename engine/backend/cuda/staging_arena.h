// Host staging for the metadata of one GPU engine step (page tables,
// per-sequence policy parameters, the kernels' per-sequence structs),
// written where it will lie in a device buffer so that structs can point at
// arrays of the same step, then copied up with one memcpy.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace attnserve {

class StagingArena {
 public:
  // Starts over for a device buffer at `device_base`.
  void Reset(void* device_base) {
    base_ = reinterpret_cast<uintptr_t>(device_base);
    bytes_.clear();
  }

  // Appends `values` and returns their device address. Arrays start on 16
  // bytes (and their type's alignment), as the kernels' vector loads want.
  template <typename T>
  T* Append(std::span<const T> values) {
    static_assert(std::is_trivially_copyable_v<T>);
    constexpr size_t kAlign = alignof(T) > 16 ? alignof(T) : 16;
    const size_t offset = (bytes_.size() + kAlign - 1) / kAlign * kAlign;
    bytes_.resize(offset + values.size_bytes());
    if (!values.empty()) std::memcpy(bytes_.data() + offset, values.data(), values.size_bytes());
    return reinterpret_cast<T*>(base_ + offset);
  }
  template <typename T>
  T* Append(const std::vector<T>& values) {
    return Append(std::span<const T>(values));
  }

  // The staged copy of what will be at `device` (an address Append returned).
  template <typename T>
  const T* HostView(const T* device) const {
    return reinterpret_cast<const T*>(bytes_.data() + (reinterpret_cast<uintptr_t>(device) - base_));
  }

  // Bytes the device buffer needs; the staged bytes to copy there.
  size_t size() const { return bytes_.size(); }
  const uint8_t* data() const { return bytes_.data(); }

 private:
  uintptr_t base_ = 0;
  std::vector<uint8_t> bytes_;
};

}  // namespace attnserve
