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

#if KLDQ_WITH_CUDA_BUILD
void dequantize_cuda(const formats::PackedWeight& p, const at::Tensor& dst) {
  const c10::cuda::CUDAGuard guard(dst.device());
  formats::PackedWeight c = p;  // contiguous stored tensors, kept alive for the launch
  c.codes = p.codes.contiguous();
  if (p.scales.defined()) c.scales = p.scales.contiguous();
  if (p.zeros.defined()) c.zeros = p.zeros.contiguous();
  const auto view = packed_view(c);
  if (!view) {
    dst.copy_(c.codes);  // dense: one rounding to dst's dtype, as the reference
    return;
  }
  // Vector path: whole 8-element chunks, 16-byte aligned output rows, 4-byte aligned codes.
  const bool vec = p.in % 8 == 0 && aligned(dst.data_ptr(), 16) && aligned(c.codes.data_ptr(), 8);
  cuda::dequant_packed(cuda_dtype(dst.scalar_type()), *view, dst.data_ptr(), vec, stream_of(dst));
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
