// Device synchronisation and memory statistics; the CUDA parts compile only in CUDA builds.
#include "kldq/core/device.hpp"

#include <fmt/format.h>

#include <sys/resource.h>

#include <regex>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace kldq {
namespace {
std::string& budget_option() {  // "--max-gpu-memory 22GiB" once limit_device_memory ran
  static std::string s;
  return s;
}
}  // namespace

void device_synchronize(c10::Device device) {
#if KLDQ_WITH_CUDA_BUILD
  if (device.is_cuda()) {  // that device, not the thread's current one
    const c10::cuda::CUDAGuard guard(device.index() < 0 ? 0 : device.index());
    c10::cuda::device_synchronize();
  }
#endif
}

int cuda_device_count() {
#if KLDQ_WITH_CUDA_BUILD
  return int(c10::cuda::device_count());
#else
  return 0;
#endif
}

uint64_t peak_allocated_bytes(c10::Device device) {
#if KLDQ_WITH_CUDA_BUILD
  if (device.is_cuda()) {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return static_cast<uint64_t>(
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
            .peak);
  }
#endif
  return 0;
}

void reset_peak_allocated_bytes(c10::Device device) {
#if KLDQ_WITH_CUDA_BUILD
  if (device.is_cuda())
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
#endif
}

void limit_device_memory(c10::Device device, uint64_t bytes, const std::string& what) {
  if (!device.is_cuda())
    throw ConfigError(
        fmt::format("{}: needs a CUDA device (the run is on {})", what, device.str()));
#if KLDQ_WITH_CUDA_BUILD
  const int index = device.index() < 0 ? 0 : device.index();
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess)
    throw Error(fmt::format("{}: cannot read the properties of {}", what, device.str()));
  const double gib = double(1 << 30);
  if (bytes == 0 || bytes > prop.totalGlobalMem)
    throw ConfigError(fmt::format("{}: {:.2f} GiB is not within the {:.2f} GiB of {}", what,
                                  double(bytes) / gib, double(prop.totalGlobalMem) / gib,
                                  prop.name));
  // The caching allocator exists only once CUDA is initialised (lazily, by the first CUDA op).
  at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
  c10::cuda::CUDACachingAllocator::setMemoryFraction(double(bytes) / double(prop.totalGlobalMem),
                                                     index);
  budget_option() = what;
#else
  (void)bytes;
  throw ConfigError(fmt::format("{}: this kldq was built without CUDA", what));
#endif
}

std::string describe_out_of_memory(const std::string& message) {
  // The allocator's text: "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total
  // capacity of 139.8 GiB of which ... Of the allocated memory 20.1 GiB is allocated by PyTorch".
  std::smatch m;
  std::string line = "out of GPU memory";
  if (std::regex_search(message, m, std::regex(R"(Tried to allocate ([0-9.]+ [KMGT]?i?B))")))
    line += fmt::format(": tried to allocate {}", m[1].str());
  if (std::regex_search(message, m, std::regex(R"(([0-9.]+ [KMGT]?i?B) is allocated by PyTorch)")))
    line += fmt::format(" with {} already allocated", m[1].str());
  line += budget_option().empty() ? fmt::format(" (the whole card)")
                                  : fmt::format(" (budget {})", budget_option());
  return line +
         "; lower --batch, --seq-len or --samples, use a smaller model or dtype, or a larger card";
}

uint64_t peak_host_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;  // kilobytes on Linux
}

uint64_t device_free_bytes(c10::Device device) {
#if KLDQ_WITH_CUDA_BUILD
  if (device.is_cuda()) {
    at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
    c10::cuda::CUDAGuard guard(device.index() < 0 ? 0 : device.index());
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return free;
  }
#endif
  (void)device;
  return 0;
}

std::string device_description(c10::Device device) {
#if KLDQ_WITH_CUDA_BUILD
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.index() < 0 ? 0 : device.index()) == cudaSuccess)
      return prop.name;
  }
#endif
  return device.str();
}

}  // namespace kldq
