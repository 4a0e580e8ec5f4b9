// Device memory of the emulated-CUDA layer: while a DeviceGuard is held, CPU allocations come from
// an allocator that fills them with 0xFF (NaN in every float type, -1 in every integer type) and
// surrounds them with 0xFF redzones; check_device_memory() finds writes into a redzone.
#include <c10/core/CPUAllocator.h>

#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "fastseg_emulated_cuda_glue.h"

namespace fastseg::emulated {
void check_device_memory(std::string* problem);
}

namespace fastseg::emulated {
namespace {

constexpr unsigned char kPoison = 0xFF;
constexpr size_t kRedzone = 256;  // a multiple of the CPU allocator's 64-byte alignment
constexpr uint8_t kPriority = 255;

struct Allocation {
  c10::DataPtr base;
  size_t bytes;
};

std::mutex& lock() {
  static std::mutex instance;
  return instance;
}

// Live allocations by their user pointer.
std::map<void*, Allocation*>& live() {
  static std::map<void*, Allocation*> instance;
  return instance;
}

bool redzones_intact(const Allocation& a) {
  const auto* base = static_cast<const unsigned char*>(a.base.get());
  for (size_t i = 0; i < kRedzone; ++i) {
    if (base[i] != kPoison || base[kRedzone + a.bytes + i] != kPoison) return false;
  }
  return true;
}

void release(void* context) {
  auto* allocation = static_cast<Allocation*>(context);
  {
    std::lock_guard<std::mutex> guard(lock());
    live().erase(static_cast<unsigned char*>(allocation->base.get()) + kRedzone);
  }
  delete allocation;
}

struct PoisoningAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;

  c10::DataPtr allocate(size_t bytes) override {
    auto* allocation = new Allocation{base->allocate(bytes + 2 * kRedzone), bytes};
    auto* data = static_cast<unsigned char*>(allocation->base.get());
    std::memset(data, kPoison, bytes + 2 * kRedzone);
    {
      std::lock_guard<std::mutex> guard(lock());
      live()[data + kRedzone] = allocation;
    }
    return {data + kRedzone, allocation, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* destination, const void* source, std::size_t count) const override {
    default_copy_data(destination, source, count);
  }
};

PoisoningAllocator& poisoning_allocator() {
  static PoisoningAllocator instance;
  return instance;
}

int& guard_depth() {
  static int depth = 0;
  return depth;
}

}  // namespace

void check_device_memory(std::string* problem) {
  std::lock_guard<std::mutex> guard(lock());
  for (const auto& [data, allocation] : live()) {
    if (!redzones_intact(*allocation)) {
      *problem = "a kernel wrote outside a device buffer of " + std::to_string(allocation->bytes) + " bytes";
      std::memset(allocation->base.get(), kPoison, kRedzone);  // report each overrun once
      std::memset(static_cast<unsigned char*>(data) + allocation->bytes, kPoison, kRedzone);
      return;
    }
  }
}

}  // namespace fastseg::emulated

namespace fastseg::glue {

DeviceGuard::DeviceGuard(c10::Device /*device*/) : previous_(c10::GetCPUAllocator()) {
  auto& allocator = emulated::poisoning_allocator();
  if (emulated::guard_depth()++ == 0) {
    allocator.base = previous_;
    c10::SetCPUAllocator(&allocator, emulated::kPriority);
  }
}

DeviceGuard::~DeviceGuard() {
  if (--emulated::guard_depth() == 0) c10::SetCPUAllocator(previous_, emulated::kPriority);
}

}  // namespace fastseg::glue
