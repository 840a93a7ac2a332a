// Per-token KL divergence between a model's and a reference's next-token distributions over the
// full vocabulary, with both NLLs of the actual next token and top-1 agreement, from two chunks
// of logits. CUDA: one fused kernel (src/kernels/kl_cuda.cu, double accumulation); CPU: fp32
// log-softmax with ATen.
#pragma once

#include <ATen/core/Tensor.h>

namespace kldq::kernels {

struct TokenKl {
  at::Tensor kl;         // [N] KL(P_ref || P_q), natural log
  at::Tensor nll;        // [N] -log p_q(target)
  at::Tensor nll_ref;    // [N] -log p_ref(target)
  at::Tensor same_top1;  // [N] bool-valued uint8: first argmaxes equal
};

// logits, ref_logits: [N, V] on one device, fp32/fp16/bf16 (the same dtype); target: [N] int64
// in [0, V) (checked by callers, once per data set rather than per chunk: it would synchronise).
// Floating outputs are double on CUDA, float on CPU.
TokenKl token_kl(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& target);

}  // namespace kldq::kernels
