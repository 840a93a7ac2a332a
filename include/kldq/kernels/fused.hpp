// Fused elementwise kernels of the decoder: RMSNorm (optionally with the residual add before
// it), rotate-half RoPE (alone, or with a decode step's K/V cache append), and SwiGLU.
// Device-agnostic entry points: CUDA tensors run the kernels in src/kernels/fused_cuda.cu and
// rope_cuda.cu, everything else the libtorch reference composition (the exact operation sequence
// of transformers, which the CUDA kernels reproduce rounding for rounding). The kernels have no
// backward, so calls that autograd records (grad mode on and an operand that requires grad) take
// the composition on CUDA too.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace kldq::kernels {

// Whether kldq's CUDA kernels launch chained (programmatic dependent launch, compute capability
// 9.0+: a kernel's prologue overlaps its predecessor; docs/GPU.md). On when KLDQ_PDL is unset or
// 1, off when 0 (another value is an error at the first launch); the values are the same either
// way. A no-op without CUDA.
void set_chained_launches(bool on);
// Whether launches are chained now: switched on, and the device (9.0+) and the kernels' build
// (code for 9.0) support it. False without CUDA.
bool chained_launches();

// transformers' RMSNorm: normed = T(x * rsqrt(mean(x^2) + eps)) computed in fp32, then
// T(weight * normed). x: [..., H] contiguous, weight: [H] -> [..., H] (dtype T of x).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// sum = T(residual + delta); returns {sum, rms_norm(sum, weight, eps)}. Shapes as rms_norm.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& residual, const at::Tensor& delta,
                                               const at::Tensor& weight, double eps);

// Rotate-half RoPE: x: [B, T, n, d] (any strides, unit stride on d), cos/sin: [T, d] in x's
// dtype -> contiguous [B, T, n, d]: T(T(x * cos) + T(rotate_half(x) * sin)). cos/sin may also
// be [B, T, d] (each row at its own positions, as a left-padded batch in a KV cache needs).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// A KV-cache step's RoPE and append: returns rope(q, cos, sin) and writes rope(k, cos, sin) and
// v into the caches kc, vc at columns `cols`, as kc.index_copy_(2, cols, k') with k' the
// rotated k as [B, nkv, T, d] (the same values). q: [B, T, nq, d], k, v: [B, T, nkv, d] (unit
// stride on d); cos/sin as rope's; kc, vc: [B, nkv, C, d] contiguous; cols: [T] int64 on their
// device, each in [0, C) (callers check the room on the host: KvCache::check_room; the CUDA
// kernel traps on a column outside, as index_copy_'s device assert does). One kernel on CUDA
// instead of four.
at::Tensor rope_append(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& kc,
                       const at::Tensor& vc, const at::Tensor& cols);

// A KV-cache step's RoPE rows and attention mask, for B rows left-padded by pad [B] at the
// columns cols [T] (both int64 on the tables' device): cos/sin [B, T, d] are the tables' rows
// at position max(col - pad, 0); mask [B, 1, T, K] (undefined unless with_mask) is additive in
// the tables' dtype: 0 where key k is visible to column c (pad <= k <= c, or k == c where c is
// itself a pad column, c < pad, so that the row's softmax stays finite), -inf elsewhere. Tables
// [len, d] contiguous; every position < len (the CUDA kernel traps otherwise). One kernel on
// CUDA instead of fifteen.
struct StepInputs {
  at::Tensor cos, sin, mask;
};
StepInputs step_inputs(const at::Tensor& cols, const at::Tensor& pad, const at::Tensor& cos,
                       const at::Tensor& sin, int64_t K, bool with_mask);

// SwiGLU on a fused gate|up projection: gate_up: [..., 2I] contiguous -> [..., I] =
// T(T(silu(gate)) * up).
at::Tensor silu_mul(const at::Tensor& gate_up);
// The same on separate gate and up outputs of one shape [..., I] (packed layers, not fused).
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

}  // namespace kldq::kernels
