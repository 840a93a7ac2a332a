// Raw-pointer launcher of the fused dequantize + GEMV kernel (gemv_cuda.cu). Internal to the
// kernels module: no ATen types.
#pragma once

#include <cstdint>

#include "fused_cuda.hpp"
#include "packed_view.hpp"

namespace kldq::kernels::cuda {

// The most rows of x the kernels take: beyond, dequantize + GEMM (which reads the weight once for
// all rows) is faster. bf16/fp16 rows go to the tensor cores, whose cost hardly depends on the
// rows up to 16 (the MMA's n dimension is padded to 8 or 16). fp32 rows go to the SIMT kernel,
// whose cost grows with the rows: measured on an H200 (kldq_bench_dequant, 2026-12-05), nf4 took
// 69 us against 92 for dequantize + GEMM at 4 rows of a [18944, 3584] weight, 193 at 16.
constexpr int64_t kGemvMaxRows = 16;
constexpr int64_t kGemvMaxRowsF32 = 4;
inline int64_t gemv_max_rows(Dtype t) {
  return t == Dtype::F32 ? kGemvMaxRowsF32 : kGemvMaxRows;
}

// The multiple of columns the kernels take: the SIMT kernel (fp32) reads chunks of 8 weights, the
// tensor-core kernel quads of 4 chunks (one 16-byte load of 4-bit codes per row and thread).
inline int64_t gemv_col_multiple(Dtype t) {
  return t == Dtype::F32 ? 8 : 32;
}

// y[m, rows] = x[m, cols] . W^T (+ bias[rows]) for m <= gemv_max_rows(t); x, y contiguous in
// dtype t, cols % gemv_col_multiple(t) == 0, x rows aligned to 8 elements, codes 8-byte aligned
// (16-byte for bf16/fp16). swiglu (bf16/fp16, rows % 16 == 0): W holds a gate/up pair's rows
// [gate; up] and y [m, rows / 2] = silu(gate) * up, kernels::silu_mul's values.
void gemv_packed(Dtype t, const PackedView& w, const void* x, int64_t m, const void* bias, void* y,
                 bool swiglu, void* stream);

}  // namespace kldq::kernels::cuda
