// Helpers shared by kldq's CUDA kernel files: element conversions with explicit rounding, launch
// checks, chained (programmatic dependent) launches, grid sizing and dispatch over the Dtype of
// the raw-pointer launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {

template <class T>
struct Conv;
template <>
struct Conv<float> {
  __device__ static inline float to_float(float v) { return v; }
  __device__ static inline float from_float(float v) { return v; }
};
template <>
struct Conv<__half> {
  __device__ static inline float to_float(__half v) { return __half2float(v); }
  __device__ static inline __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16> {
  __device__ static inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static inline __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// Rounds a float to T and back: the value PyTorch would hold in a tensor of dtype T.
template <class T>
__device__ float round_to(float v) {
  return Conv<T>::to_float(Conv<T>::from_float(v));
}

// PyTorch's silu formula, then the product: T(T(g / (1 + exp(-g))) * u).
template <class T>
__device__ inline T silu_times(float g, float u) {
  const float s = round_to<T>(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))));
  return Conv<T>::from_float(__fmul_rn(s, u));
}

// N elements of T moved as one aligned load or store (8 or 16 bytes): the memory-bound kernels
// read and write whole vectors, not 2-byte scalars. Callers check alignment (aligned() below).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T e[N];
};

template <class T, int N>
__device__ inline Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

// load_pack through L2 only (ld.global.cg): for data this kernel wrote. A plain load from a
// __restrict__ pointer may compile to the read-only path (ld.global.nc), which PTX defines only
// for memory that no thread writes while the kernel runs.
template <class T, int N>
__device__ inline Pack<T, N> load_pack_written(const T* p) {
  static_assert(sizeof(Pack<T, N>) == 8 || sizeof(Pack<T, N>) == 16, "8- or 16-byte vectors");
  using V = std::conditional_t<sizeof(Pack<T, N>) == 8, uint2, uint4>;
  const V v = __ldcg(reinterpret_cast<const V*>(p));
  Pack<T, N> out;
  memcpy(&out, &v, sizeof(v));
  return out;
}

template <class T, int N>
__device__ inline void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

inline int64_t element_size(Dtype t) {
  return t == Dtype::F32 ? 4 : 2;
}

inline bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) +
                             ": CUDA launch failed: " + cudaGetErrorString(err));
}

// Programmatic dependent launch (compute capability 9.0 and later). A decode step is ~300 short
// kernels; in plain stream order each one's launch and ramp-up waits for its predecessor's last
// block. A kernel started by launch_chained may instead begin as soon as every block of its
// predecessor has called chain_release(): it runs its prologue (a shared-memory table, an L2
// prefetch of its weights) and then chain_wait() blocks until the predecessor has finished and
// its writes are visible. So every kernel launched chained calls chain_wait() before it reads
// or writes any memory another kernel writes or reads (activations, caches, outputs; a freed
// buffer of the predecessor may be this kernel's output), and every block calls it (a grid whose
// blocks all skipped it would not order the kernels after it). Both are no-ops on older devices
// and in plain launches. KLDQ_PDL=0 launches plainly (the A/B switch of the speed benchmarks).
__device__ inline void chain_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ inline void chain_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, shared, s>>>(args...), chained to the stream's previous kernel (above).
template <class... P, class... A>
void launch_chained(const char* what, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared,
                    cudaStream_t s, A&&... args) {
  cudaLaunchAttribute chain{};
  chain.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  chain.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = s;
  config.attrs = &chain;
  config.numAttrs = chaining() ? 1 : 0;
  // A failed launch is also the runtime's last error, which check_launch reads and clears.
  (void)cudaLaunchKernelEx(&config, kernel, std::forward<A>(args)...);
  check_launch(what);
}

// Streaming multiprocessors of the current device (read once: kldq drives one device type).
inline int sm_count() {
  static int sms = 0;
  if (sms == 0) {
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (sms <= 0) sms = 1;
  }
  return sms;
}

// Enough blocks to fill the GPU several times over; the kernels loop over the rest.
inline unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

template <class F>
inline void dispatch(Dtype t, F&& f) {
  switch (t) {
    case Dtype::F32:
      f(float{});
      break;
    case Dtype::F16:
      f(__half{});
      break;
    case Dtype::BF16:
      f(__nv_bfloat16{});
      break;
  }
}

}  // namespace kldq::kernels::cuda
