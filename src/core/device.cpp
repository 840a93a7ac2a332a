// Device synchronisation and memory statistics; the CUDA parts compile only in CUDA builds.
#include "kldq/core/device.hpp"

#include "kldq/build_config.hpp"

#if KLDQ_WITH_CUDA_BUILD
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
