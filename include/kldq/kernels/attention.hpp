// Attention of one decode step over a KV cache on CUDA (src/kernels/attention_cuda.cu): the
// cache's columns split into chunks attended in parallel and combined (flash-decoding), in two
// kernels chained to the step's others. Callers fall back to SDPA where it does not apply.
#pragma once

#include <ATen/core/Tensor.h>

namespace kldq::kernels {

// Whether decode_attention takes these operands: CUDA bf16/fp16 tensors on one device; q [B, nq,
// 1, d] whose memory is [B, nq, d] contiguous (a step's queries, as rope_append returns them,
// transposed); kc, vc [B, nkv, C, d] contiguous; mask [B, 1, 1, C] contiguous in q's dtype; d 64
// or 128 and nq a multiple of nkv, at most 8 query heads per kv head; no autograd.
bool decode_attention_applies(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                              const at::Tensor& mask);
// softmax(q k^T / sqrt(d) + mask) v with scores, softmax and sum in fp32, rounded once -> [B, 1,
// nq d] (SDPA's output transposed and flattened, as the o projection takes it). Columns where the
// mask is -inf are not read.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                            const at::Tensor& mask);

}  // namespace kldq::kernels
