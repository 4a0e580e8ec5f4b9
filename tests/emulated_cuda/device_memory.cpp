// Device memory of the emulated-CUDA layer: while a DeviceGuard is held, CPU allocations come from
// an allocator that fills them with 0xFF (NaN in every float type, -1 in every integer type) and
// surrounds them with 0xFF redzones and inaccessible guard pages; check_device_memory() finds writes
// into a redzone, an access beyond it faults.
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
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
constexpr size_t kRedzone = 4096;  // per side, between the buffer and an inaccessible guard page
constexpr uint8_t kPriority = 255;

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// One mapping: guard page, redzone, the buffer, redzone (up to the page end), guard page.
struct Allocation {
  unsigned char* mapping;
  size_t mapped;
  unsigned char* data;
  size_t bytes;
};

std::mutex& lock() {
  static std::mutex instance;
  return instance;
}

// Live allocations by their data pointer.
std::map<void*, Allocation*>& live() {
  static std::map<void*, Allocation*> instance;
  return instance;
}

bool redzones_intact(const Allocation& a) {
  const auto poisoned = [](unsigned char byte) { return byte == kPoison; };
  const unsigned char* data = a.data;
  const unsigned char* end = a.mapping + a.mapped - page_size();
  return std::all_of(data - kRedzone, data, poisoned) && std::all_of(data + a.bytes, end, poisoned);
}

void release(void* context) {
  auto* allocation = static_cast<Allocation*>(context);
  {
    std::lock_guard<std::mutex> guard(lock());
    live().erase(allocation->data);
  }
  munmap(allocation->mapping, allocation->mapped);
  delete allocation;
}

struct PoisoningAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    const size_t page = page_size();
    const size_t inner = (kRedzone + bytes + kRedzone + page - 1) / page * page;
    const size_t mapped = inner + 2 * page;
    void* mapping = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(mapping != MAP_FAILED, "emulated CUDA: out of memory allocating ", bytes, " bytes");
    auto* base = static_cast<unsigned char*>(mapping);
    mprotect(base, page, PROT_NONE);
    mprotect(base + page + inner, page, PROT_NONE);
    std::memset(base + page, kPoison, inner);
    // the buffer ends as close to the upper guard page as the 64-byte alignment allows
    const size_t start = (inner - kRedzone - bytes) / 64 * 64;
    auto* allocation = new Allocation{base, mapped, base + page + start, bytes};
    {
      std::lock_guard<std::mutex> guard(lock());
      live()[allocation->data] = allocation;
    }
    return {allocation->data, allocation, &release, c10::Device(c10::DeviceType::CPU)};
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
      // report each overrun once
      std::memset(allocation->mapping + page_size(), kPoison, allocation->mapped - 2 * page_size());
      return;
    }
  }
}

}  // namespace fastseg::emulated

namespace fastseg::glue {

DeviceGuard::DeviceGuard(c10::Device /*device*/) : previous_(c10::GetCPUAllocator()) {
  if (emulated::guard_depth()++ == 0) c10::SetCPUAllocator(&emulated::poisoning_allocator(), emulated::kPriority);
}

DeviceGuard::~DeviceGuard() {
  if (--emulated::guard_depth() == 0) c10::SetCPUAllocator(previous_, emulated::kPriority);
}

}  // namespace fastseg::glue
