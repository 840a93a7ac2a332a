// What the kernels' ATen-side dispatchers (fused.cpp, dequant.cpp, gemv.cpp) share when handing
// tensors to the raw-pointer CUDA launchers: the launchers' dtype, the tensor's current stream,
// pointer alignment and a packed weight's view. Internal to the kernels module; CUDA builds only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <optional>

#include "fused_cuda.hpp"
#include "kldq/formats/packed.hpp"
#include "packed_view.hpp"

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

// The launchers' view of p (its tensors' pointers, as they are: callers make them contiguous),
// or nullopt for a dense format (bf16, fp16), which no decoder reads.
inline std::optional<cuda::PackedView> packed_view(const formats::PackedWeight& p) {
  using formats::Format;
  cuda::PackedView v;
  v.codes = static_cast<const uint8_t*>(p.codes.data_ptr());
  v.scales = p.scales.defined() ? p.scales.data_ptr() : nullptr;
  v.zeros = p.zeros.defined() ? p.zeros.data_ptr() : nullptr;
  v.rows = p.out, v.cols = p.in, v.group = p.spec.group;
  switch (p.spec.format) {
    case Format::NF4:
    case Format::FP4:
      v.kind = cuda::PackedView::Kind::FourBit, v.fp4 = p.spec.format == Format::FP4;
      return v;
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
      v.kind = cuda::PackedView::Kind::IntGroup, v.float_zero = p.spec.float_zero;
      v.bits = p.spec.traits().code_bits;
      return v;
    case Format::INT8:
      v.kind = cuda::PackedView::Kind::Int8;
      return v;
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
    case Format::FP8_E4M3_NOSCALE:
      v.kind = cuda::PackedView::Kind::Fp8, v.e5m2 = p.spec.format == Format::FP8_E5M2;
      v.per_tensor = p.spec.per_tensor;
      return v;
    case Format::BF16:
    case Format::FP16:
      return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace kldq::kernels
