// Per-token KL dispatch: the fused CUDA kernel for CUDA tensors, ATen fp32 ops otherwise.
#include "kldq/kernels/kl.hpp"

#include <ATen/ATen.h>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kl_cuda.hpp"
#endif

namespace kldq::kernels {

TokenKl token_kl(const at::Tensor& q, const at::Tensor& r, const at::Tensor& target) {
  check(q.dim() == 2 && q.sizes() == r.sizes() && q.scalar_type() == r.scalar_type() &&
            q.device() == r.device(),
        "token_kl: logits must be [N, V] of the same dtype and device");
  check(target.dim() == 1 && target.size(0) == q.size(0) && target.scalar_type() == at::kLong,
        "token_kl: target must be [N] int64");
  const at::ScalarType st = q.scalar_type();
  check(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
        "token_kl: logits must be fp32, fp16 or bf16");
#if KLDQ_WITH_CUDA_BUILD
  if (q.is_cuda()) {
    const c10::cuda::CUDAGuard guard(q.device());
    const at::Tensor qc = q.contiguous(), rc = r.contiguous();
    const at::Tensor tc = target.to(q.device()).contiguous();
    const int64_t n = q.size(0), v = q.size(1);
    auto f64 = q.options().dtype(at::kDouble);
    TokenKl out{at::empty({n}, f64), at::empty({n}, f64), at::empty({n}, f64),
                at::empty({n}, q.options().dtype(at::kByte))};
    const size_t es = q.element_size();
    const bool vec = (v * static_cast<int64_t>(es)) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(qc.data_ptr()) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(rc.data_ptr()) % 16 == 0;
    const cuda::Dtype t = st == at::kFloat  ? cuda::Dtype::F32
                          : st == at::kHalf ? cuda::Dtype::F16
                                            : cuda::Dtype::BF16;
    cuda::token_kl(t, qc.data_ptr(), rc.data_ptr(), tc.data_ptr<int64_t>(), n, v,
                   out.kl.data_ptr<double>(), out.nll.data_ptr<double>(),
                   out.nll_ref.data_ptr<double>(), out.same_top1.data_ptr<uint8_t>(), vec,
                   c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
    return out;
  }
#endif
  // fp32 log-softmax of both; the reference's log-probabilities are never rounded to 16 bits.
  const at::Tensor lq = at::log_softmax(q, -1, at::kFloat), lr = at::log_softmax(r, -1, at::kFloat);
  const at::Tensor tgt = target.to(q.device()).view({-1, 1});
  // Masked (-inf) reference logits have probability 0: their term is 0, not 0 * NaN.
  const at::Tensor terms = at::where(lr.isinf(), at::zeros_like(lr), lr.exp() * (lr - lq));
  return {terms.sum(-1), -lq.gather(1, tgt).squeeze(1), -lr.gather(1, tgt).squeeze(1),
          (lr.argmax(-1) == lq.argmax(-1)).to(at::kByte)};
}

}  // namespace kldq::kernels
