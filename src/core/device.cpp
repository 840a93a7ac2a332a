// Device synchronisation and memory statistics; the CUDA parts compile only in CUDA builds.
#include "kldq/core/device.hpp"

#include <fmt/format.h>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace kldq {

void device_synchronize(c10::Device device) {
#if KLDQ_WITH_CUDA_BUILD
  if (device.is_cuda()) c10::cuda::device_synchronize();
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
#else
  (void)bytes;
  throw ConfigError(fmt::format("{}: this kldq was built without CUDA", what));
#endif
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
