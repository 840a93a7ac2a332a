// Fused dequantize + GEMV dispatch (gemv_cuda.cu): which products it takes (CUDA, at most
// gemv_max_rows rows of activations, whole chunks or quads of chunks, aligned tensors) and the
// argument marshalling. Everything else goes through dequantize_into + at::linear
// (model/qlinear.cpp).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <optional>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"
#include "kldq/kernels/dequant.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "gemv_cuda.hpp"
#include "torch_cuda.hpp"
#endif

namespace kldq::kernels {

bool gemv_applies(const formats::PackedWeight& p, const at::Tensor& x, const at::Tensor& bias) {
#if KLDQ_WITH_CUDA_BUILD
  const auto t = x.scalar_type();
  if (!x.is_cuda() || !p.codes.defined() || p.codes.device() != x.device()) return false;
  if (t != at::kBFloat16 && t != at::kHalf && t != at::kFloat) return false;
  if (bias.defined() && (bias.scalar_type() != t || bias.device() != x.device() ||
                         !bias.is_contiguous() || bias.numel() != p.out))
    return false;
  // The kernel has no backward: while autograd records, the differentiable GEMM runs.
  if (at::GradMode::is_enabled() && x.requires_grad()) return false;
  if (x.dim() < 1 || x.size(-1) != p.in || !x.is_contiguous()) return false;
  if (p.in % cuda::gemv_col_multiple(cuda_dtype(t)) != 0) return false;
  if (x.numel() / p.in > cuda::gemv_max_rows(cuda_dtype(t)) || x.numel() == 0) return false;
  for (const at::Tensor* t : {&p.scales, &p.zeros})
    if (t->defined() && t->device() != x.device()) return false;
  const bool contiguous = p.codes.is_contiguous() &&
                          (!p.scales.defined() || p.scales.is_contiguous()) &&
                          (!p.zeros.defined() || p.zeros.is_contiguous());
  // x rows are read 8 elements at a time (16 or 32 bytes), codes up to 8 bytes at a time (16 by
  // the tensor-core kernel).
  return contiguous && aligned(x.data_ptr(), 8 * x.element_size()) &&
         aligned(p.codes.data_ptr(), t == at::kFloat ? 8 : 16) && packed_view(p).has_value();
#else
  (void)p, (void)x, (void)bias;
  return false;
#endif
}

namespace {

// y [..., p.out] (or [..., p.out / 2] with the SwiGLU epilogue) through the fused kernel.
at::Tensor run_gemv(const formats::PackedWeight& p, const at::Tensor& x, const at::Tensor& bias,
                    bool swiglu) {
#if KLDQ_WITH_CUDA_BUILD
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = swiglu ? p.out / 2 : p.out;
  at::Tensor y = at::empty(shape, x.options());
  cuda::gemv_packed(cuda_dtype(x.scalar_type()), *packed_view(p), x.data_ptr(), x.numel() / p.in,
                    bias.defined() ? bias.data_ptr() : nullptr, y.data_ptr(), swiglu, stream_of(x));
  return y;
#else
  (void)p, (void)x, (void)bias, (void)swiglu;
  return {};
#endif
}

}  // namespace

at::Tensor gemv(const formats::PackedWeight& p, const at::Tensor& x, const at::Tensor& bias) {
  check(gemv_applies(p, x, bias), "gemv: the product does not meet the fused kernel's conditions");
  return run_gemv(p, x, bias, false);
}

bool gemv_swiglu_applies(const formats::PackedWeight& p, const at::Tensor& x,
                         const at::Tensor& bias) {
  return x.scalar_type() != at::kFloat && p.out % 16 == 0 && gemv_applies(p, x, bias);
}

at::Tensor gemv_swiglu(const formats::PackedWeight& p, const at::Tensor& x,
                       const at::Tensor& bias) {
  check(gemv_swiglu_applies(p, x, bias),
        "gemv_swiglu: the product does not meet the fused kernel's conditions");
  return run_gemv(p, x, bias, true);
}

}  // namespace kldq::kernels
