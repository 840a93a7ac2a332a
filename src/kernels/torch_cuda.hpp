// What the kernels' ATen-side dispatchers (fused.cpp, dequant.cpp, gemv.cpp) share when handing
// tensors to the raw-pointer CUDA launchers: the launchers' dtype, the tensor's current stream
// and pointer alignment. Internal to the kernels module; CUDA builds only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "fused_cuda.hpp"

namespace kldq::kernels {

// fp32, fp16 or bf16 (the only dtypes the launchers take; callers check first).
inline cuda::Dtype cuda_dtype(at::ScalarType t) {
  return t == at::kFloat ? cuda::Dtype::F32 : t == at::kHalf ? cuda::Dtype::F16 : cuda::Dtype::BF16;
}

// The current CUDA stream of x's device, as the launchers take it.
inline void* stream_of(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

inline bool aligned(const void* p, size_t a) {
  return reinterpret_cast<uintptr_t>(p) % a == 0;
}

}  // namespace kldq::kernels
