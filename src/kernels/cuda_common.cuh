// Helpers shared by kldq's CUDA kernel files: element conversions with explicit rounding, launch
// checks, grid sizing and dispatch over the Dtype of the raw-pointer launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

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
