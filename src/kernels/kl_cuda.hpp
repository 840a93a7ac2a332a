// Raw-pointer launcher of the fused per-token KL kernel (kl_cuda.cu). Internal to the kernels
// module: no ATen types.
#pragma once

#include <cstdint>

#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {

// For each of `rows` rows of logits (model `q` and reference `r`, [rows, vocab] of dtype t,
// row-contiguous) and the row's target token: kl = KL(softmax(r) || softmax(q)), nll_q, nll_r
// (-log-probability of the target; double outputs) and same_top1 (first-occurrence argmaxes
// equal). `vec`: vocab * sizeof(t) % 16 == 0 and 16-byte aligned bases (vector loads).
void token_kl(Dtype t, const void* q, const void* r, const int64_t* target, int64_t rows,
              int64_t vocab, double* kl, double* nll_q, double* nll_r, uint8_t* same_top1, bool vec,
              void* stream);

}  // namespace kldq::kernels::cuda
