// Device utilities without CUDA types in the interface: synchronisation and the caching
// allocator's peak-memory counters (no-ops / zero on CPU).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace kldq {

// Waits for all queued work on `device` (CUDA); nothing on CPU.
void device_synchronize(c10::Device device);
// Peak bytes allocated by libtorch's CUDA caching allocator since the last reset; 0 on CPU.
uint64_t peak_allocated_bytes(c10::Device device);
void reset_peak_allocated_bytes(c10::Device device);
// "NVIDIA H100 80GB HBM3" or "cpu".
std::string device_description(c10::Device device);

}  // namespace kldq
