// A decode step's attention over a KV cache (kernels/attention.hpp): operand checks and the
// launch of the CUDA kernels of attention_cuda.cu.
#include "kldq/kernels/attention.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "attention_cuda.hpp"
#include "torch_cuda.hpp"
#endif

namespace kldq::kernels {

bool decode_attention_applies(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                              const at::Tensor& mask) {
#if KLDQ_WITH_CUDA_BUILD
  if (!q.defined() || !kc.defined() || !vc.defined() || !mask.defined()) return false;
  if (!q.is_cuda() || q.dim() != 4 || kc.dim() != 4 || q.size(2) != 1) return false;
  const auto t = q.scalar_type();
  if (t != at::kBFloat16 && t != at::kHalf) return false;
  for (const at::Tensor* x : {&kc, &vc, &mask})
    if (x->scalar_type() != t || x->device() != q.device() || !x->is_contiguous()) return false;
  const int64_t B = q.size(0), nq = q.size(1), d = q.size(3), nkv = kc.size(1), C = kc.size(2);
  if (kc.sizes() != vc.sizes() || kc.size(0) != B || kc.size(3) != d) return false;
  if (mask.sizes() != at::IntArrayRef{B, 1, 1, C}) return false;
  // [B, nq, 1, d] with the memory of [B, nq, d] contiguous (T = 1: any stride on the 1).
  if (q.stride(3) != 1 || q.stride(1) != d || q.stride(0) != nq * d) return false;
  if (at::GradMode::is_enabled() && q.requires_grad()) return false;
  return cuda::decode_attention_fits(nq, nkv, d) && aligned(q.data_ptr(), 16) &&
         aligned(kc.data_ptr(), 16) && aligned(vc.data_ptr(), 16);
#else
  (void)q, (void)kc, (void)vc, (void)mask;
  return false;
#endif
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                            const at::Tensor& mask) {
  check(decode_attention_applies(q, kc, vc, mask),
        "decode_attention: the operands do not meet the kernel's conditions");
#if KLDQ_WITH_CUDA_BUILD
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), nq = q.size(1), d = q.size(3), nkv = kc.size(1), C = kc.size(2);
  const at::Tensor part =
      at::empty({B, nq, cuda::decode_attention_chunks(C), d + 2}, q.options().dtype(at::kFloat));
  at::Tensor out = at::empty({B, 1, nq * d}, q.options());
  cuda::decode_attention(cuda_dtype(q.scalar_type()), q.data_ptr(), kc.data_ptr(), vc.data_ptr(),
                         mask.data_ptr(), part.data_ptr<float>(), out.data_ptr(), B, nq, nkv, C, d,
                         stream_of(q));
  return out;
#else
  return {};
#endif
}

}  // namespace kldq::kernels
