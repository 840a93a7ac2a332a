// Dequantization of packed weights on the weight's device: the CUDA kernels of
// src/kernels/dequant_cuda.cu for CUDA tensors, the CPU reference (formats::dequantize) otherwise.
// Both give formats::dequantize's fp32 values rounded once to the requested dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include "kldq/formats/packed.hpp"

namespace kldq::kernels {

// p (all tensors on one device) -> dst: contiguous [p.out, p.in] on that device, fp32/fp16/bf16.
void dequantize_into(const formats::PackedWeight& p, const at::Tensor& dst);

// p -> new [p.out, p.in] tensor of `dtype` on p's device.
at::Tensor dequantize(const formats::PackedWeight& p, at::ScalarType dtype);

// Fused dequantize + matmul for a few rows of activations (decode steps): x [..., p.in] with at
// most 16 rows (bf16/fp16, on the tensor cores) or 4 (fp32) -> [..., p.out] in x's dtype, bias
// [p.out] added when defined; each weight is read once (src/kernels/gemv_cuda.cu), no dequantized
// copy. The weights are the ones dequantize_into gives in x's dtype (only the fp32 summation
// order differs from a GEMM's), except in bf16/fp16 for int4 in groups of 128 (the exact
// (code - zero) x scale) and nf4/fp4 in blocks of 64+ with p.in % 128 == 0 (the code value in
// x's dtype times the fp32 absmax): docs/FORMATS.md, "Fused dequantize + GEMV". gemv_applies: CUDA
// tensors on one device, fp32/fp16/bf16, a packed (not dense) format, p.in % 8 == 0, contiguous and
// aligned tensors; gemv checks it.
bool gemv_applies(const formats::PackedWeight& p, const at::Tensor& x, const at::Tensor& bias);
at::Tensor gemv(const formats::PackedWeight& p, const at::Tensor& x, const at::Tensor& bias);
// The SwiGLU of a fused gate/up weight p (rows [gate; up]) in the same kernel: x [..., p.in] ->
// [..., p.out / 2] = kernels::silu_mul(gemv(p, x, bias)), value for value (each gate and up output
// rounded to x's dtype first); no [..., p.out] intermediate and no second kernel.
// gemv_swiglu_applies: gemv_applies, x bf16 or fp16, p.out % 16 == 0.
bool gemv_swiglu_applies(const formats::PackedWeight& p, const at::Tensor& x,
                         const at::Tensor& bias);
at::Tensor gemv_swiglu(const formats::PackedWeight& p, const at::Tensor& x, const at::Tensor& bias);

// A scratch buffer for dequantize-then-matmul, grown on demand and reused by every packed layer
// of one decoder: get() may return the previous call's memory, so a result is valid until the
// next get() (one decoder runs on one stream at a time). Not shared across threads.
class Workspace {
 public:
  // [numel] of `dtype` on `device`.
  at::Tensor get(int64_t numel, at::ScalarType dtype, c10::Device device);

 private:
  at::Tensor buffer_;  // [capacity] in the dtype and device of the last call
};

}  // namespace kldq::kernels
