// Device utilities without CUDA types in the interface: synchronisation and the caching
// allocator's peak-memory counters (no-ops / zero on CPU).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace kldq {

// Waits for all queued work on `device` (CUDA); nothing on CPU.
void device_synchronize(c10::Device device);
// Visible CUDA devices (0 in a build without CUDA).
int cuda_device_count();
// Peak bytes allocated by libtorch's CUDA caching allocator since the last reset; 0 on CPU.
uint64_t peak_allocated_bytes(c10::Device device);
void reset_peak_allocated_bytes(c10::Device device);
// Caps libtorch's CUDA caching allocator on `device` at `bytes` (emulating a smaller card: an
// allocation beyond it fails with CUDA's out-of-memory error). ConfigError when `device` is not
// CUDA or `bytes` exceeds the card's memory; `what` names the option in the message.
void limit_device_memory(c10::Device device, uint64_t bytes, const std::string& what);
// Peak resident host memory of this process so far (getrusage's maximum RSS).
uint64_t peak_host_bytes();
// Free memory of a CUDA device as the driver reports it (0 on CPU).
uint64_t device_free_bytes(c10::Device device);
// "NVIDIA H100 80GB HBM3" or "cpu".
std::string device_description(c10::Device device);
// One line for libtorch's multi-line CUDA out-of-memory message: what was being allocated, what
// was in use, the budget (--max-gpu-memory when given) and the options that lower the need.
std::string describe_out_of_memory(const std::string& torch_message);

}  // namespace kldq
