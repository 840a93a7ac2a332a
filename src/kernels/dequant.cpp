// Dequantization dispatch: argument checks, the CUDA launchers for CUDA weights, the CPU
// reference for the rest; and the reused workspace of the dequantize-then-matmul path.
#include "kldq/kernels/dequant.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "dequant_cuda.hpp"
#include "torch_cuda.hpp"
#endif

namespace kldq::kernels {
namespace {

using formats::Format;

#if KLDQ_WITH_CUDA_BUILD
template <class T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

void dequantize_cuda(const formats::PackedWeight& p, const at::Tensor& dst) {
  const c10::cuda::CUDAGuard guard(dst.device());
  void* stream = stream_of(dst);
  const cuda::Dtype t = cuda_dtype(dst.scalar_type());
  const at::Tensor codes = p.codes.contiguous();
  const at::Tensor scales = p.scales.defined() ? p.scales.contiguous() : at::Tensor();
  const at::Tensor zeros = p.zeros.defined() ? p.zeros.contiguous() : at::Tensor();
  // Vector path: whole 8-element chunks, 16-byte aligned output rows, 4-byte aligned codes.
  const bool vec = p.in % 8 == 0 && aligned(dst.data_ptr(), 16) && aligned(codes.data_ptr(), 8);
  const int64_t rows = p.out, cols = p.in;
  switch (p.spec.format) {
    case Format::NF4:
    case Format::FP4:
      cuda::dequant_4bit(t, p.spec.format == Format::FP4, ptr<uint8_t>(codes), ptr<float>(scales),
                         rows, cols, p.spec.group, dst.data_ptr(), vec, stream);
      return;
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
      cuda::dequant_int_group(t, ptr<uint8_t>(codes), ptr<uint16_t>(scales),
                              p.spec.float_zero ? nullptr : ptr<uint8_t>(zeros),
                              p.spec.float_zero ? ptr<uint16_t>(zeros) : nullptr,
                              p.spec.traits().code_bits, rows, cols, p.spec.group, dst.data_ptr(),
                              vec, stream);
      return;
    case Format::INT8:
      cuda::dequant_int8(t, ptr<int8_t>(codes), ptr<uint16_t>(scales), rows, cols, dst.data_ptr(),
                         vec, stream);
      return;
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
    case Format::FP8_E4M3_NOSCALE:
      cuda::dequant_fp8(t, p.spec.format == Format::FP8_E5M2, ptr<uint8_t>(codes),
                        ptr<float>(scales), p.spec.per_tensor, rows, cols, dst.data_ptr(), vec,
                        stream);
      return;
    case Format::BF16:
    case Format::FP16:
      dst.copy_(codes);  // dense: one rounding to dst's dtype, as the reference
      return;
  }
}
#endif

}  // namespace

void dequantize_into(const formats::PackedWeight& p, const at::Tensor& dst) {
  const at::ScalarType st = dst.scalar_type();
  check(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
        "dequantize_into: destination must be fp32, fp16 or bf16");
  check(dst.dim() == 2 && dst.size(0) == p.out && dst.size(1) == p.in && dst.is_contiguous(),
        fmt::format("dequantize_into: destination must be contiguous [{}, {}]", p.out, p.in));
  check(p.codes.device() == dst.device(), "dequantize_into: weight and destination devices differ");
#if KLDQ_WITH_CUDA_BUILD
  if (dst.is_cuda()) return dequantize_cuda(p, dst);
#endif
  dst.copy_(formats::dequantize(p));
}

at::Tensor dequantize(const formats::PackedWeight& p, at::ScalarType dtype) {
  at::Tensor out = at::empty({p.out, p.in}, p.codes.options().dtype(dtype));
  dequantize_into(p, out);
  return out;
}

at::Tensor Workspace::get(int64_t numel, at::ScalarType dtype, c10::Device device) {
  if (!buffer_.defined() || buffer_.numel() < numel || buffer_.scalar_type() != dtype ||
      buffer_.device() != device)
    buffer_ = at::empty({numel}, at::TensorOptions().dtype(dtype).device(device));
  return buffer_.narrow(0, 0, numel);
}

}  // namespace kldq::kernels
