// Fused decoder kernels: argument checks, the libtorch reference compositions (CPU and any
// tensor the CUDA kernels do not take), and dispatch to the CUDA launchers.
#include "kldq/kernels/fused.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <limits>
#include <optional>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "fused_cuda.hpp"
#include "torch_cuda.hpp"
#endif

namespace kldq::kernels {
namespace {

// Reference compositions: transformers' code, operation for operation.
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

at::Tensor rope_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  // cos/sin [T, d] -> [T, 1, d]; per-row tables [B, T, d] -> [B, T, 1, d]
  const int64_t at_heads = cos.dim() == 2 ? 1 : 2;
  return x * cos.unsqueeze(at_heads) + rotated * sin.unsqueeze(at_heads);
}

#if KLDQ_WITH_CUDA_BUILD
// The CUDA kernels take contiguous rows of fp32/fp16/bf16 on one device.
bool use_cuda(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return x.is_cuda() && (t == at::kFloat || t == at::kHalf || t == at::kBFloat16);
}

// The CUDA kernels have no backward: while autograd records (grad mode on and an operand
// requires grad), the differentiable ATen composition runs instead. Under InferenceMode or
// no_grad this is one flag test.
bool records_grad(std::initializer_list<const at::Tensor*> operands) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : operands)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}
#endif

// Every operand on x's device with x's dtype (the kernels read them as one type).
void check_like(const at::Tensor& x, const at::Tensor& other, const char* what) {
  check(other.scalar_type() == x.scalar_type() && other.device() == x.device(),
        fmt::format("{}: operands must share dtype and device", what));
}

void check_norm_args(const at::Tensor& x, const at::Tensor& weight) {
  check(x.dim() >= 1 && x.size(-1) > 0, "rms_norm: x must be [..., H] with H > 0");
  check(weight.dim() == 1 && x.size(-1) == weight.size(0), "rms_norm: weight must be [H]");
  check_like(x, weight, "rms_norm");
}

}  // namespace

void set_chained_launches(bool on) {
#if KLDQ_WITH_CUDA_BUILD
  cuda::set_chaining(on);
#else
  (void)on;
#endif
}

bool chained_launches() {
#if KLDQ_WITH_CUDA_BUILD
  return cuda::chaining();
#else
  return false;
#endif
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_args(x, weight);
#if KLDQ_WITH_CUDA_BUILD
  if (use_cuda(x) && !records_grad({&x, &weight})) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous();
    at::Tensor out = at::empty_like(xc);
    const int64_t h = x.size(-1);
    cuda::rms_norm(cuda_dtype(x.scalar_type()), xc.data_ptr(), nullptr, nullptr,
                   weight.contiguous().data_ptr(), out.data_ptr(), xc.numel() / h, h,
                   static_cast<float>(eps), stream_of(x));
    return out;
  }
#endif
  return rms_norm_reference(x, weight, eps);
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& residual, const at::Tensor& delta,
                                               const at::Tensor& weight, double eps) {
  check_norm_args(residual, weight);
  check(residual.sizes() == delta.sizes(), "add_rms_norm: residual and delta shapes differ");
  check_like(residual, delta, "add_rms_norm");
#if KLDQ_WITH_CUDA_BUILD
  if (use_cuda(residual) && !records_grad({&residual, &delta, &weight})) {
    const c10::cuda::CUDAGuard guard(residual.device());
    const at::Tensor rc = residual.contiguous(), dc = delta.contiguous();
    at::Tensor sum = at::empty_like(rc), out = at::empty_like(rc);
    const int64_t h = rc.size(-1);
    cuda::rms_norm(cuda_dtype(rc.scalar_type()), rc.data_ptr(), dc.data_ptr(), sum.data_ptr(),
                   weight.contiguous().data_ptr(), out.data_ptr(), rc.numel() / h, h,
                   static_cast<float>(eps), stream_of(rc));
    return {sum, out};
  }
#endif
  at::Tensor sum = residual + delta;
  return {sum, rms_norm_reference(sum, weight, eps)};
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check(x.dim() == 4 && x.size(-1) > 0 && x.size(-1) % 2 == 0,
        "rope: x must be [B, T, n, d] with even d > 0");
  check_like(x, cos, "rope");
  check_like(x, sin, "rope");
  const bool per_row = cos.dim() == 3;  // [B, T, d]: each row its own positions
  check((cos.dim() == 2 || (per_row && cos.size(0) == x.size(0))) && cos.size(-2) == x.size(1) &&
            cos.size(-1) == x.size(3) && cos.sizes() == sin.sizes(),
        "rope: cos/sin must be [T, d] or [B, T, d]");
#if KLDQ_WITH_CUDA_BUILD
  if (use_cuda(x) && x.stride(3) == 1 && !records_grad({&x, &cos, &sin})) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor c = cos.contiguous(), s = sin.contiguous();
    at::Tensor out = at::empty(x.sizes(), x.options());  // contiguous [B, T, n, d]
    cuda::rope(cuda_dtype(x.scalar_type()), x.data_ptr(), c.data_ptr(), s.data_ptr(),
               out.data_ptr(), x.size(0), x.size(1), x.size(2), x.size(3), x.stride(0), x.stride(1),
               x.stride(2), per_row ? x.size(1) * x.size(3) : 0, stream_of(x));
    return out;
  }
#endif
  return rope_reference(x, cos, sin);
}

#if KLDQ_WITH_CUDA_BUILD
namespace {

// The kernel's operands, when they have its layout: heads as contiguous rows of d, contiguous
// caches and tables, one dtype and device.
std::optional<cuda::RopeAppend> rope_append_args(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, const at::Tensor& cos,
                                                 const at::Tensor& sin, const at::Tensor& kc,
                                                 const at::Tensor& vc, const at::Tensor& cols) {
  const int64_t d = q.size(3);
  for (const at::Tensor* t : {&q, &k, &v})
    if (t->stride(3) != 1 || t->stride(2) != d) return std::nullopt;
  for (const at::Tensor* t : {&k, &v, &cos, &sin, &kc, &vc})
    if (t->scalar_type() != q.scalar_type() || t->device() != q.device()) return std::nullopt;
  if (!use_cuda(q) || !cos.is_contiguous() || !sin.is_contiguous() || !kc.is_contiguous() ||
      !vc.is_contiguous() || !cols.is_cuda() || cols.device() != q.device() ||
      cols.scalar_type() != at::kLong || !cols.is_contiguous() ||
      records_grad({&q, &k, &v, &cos, &sin}))
    return std::nullopt;
  auto src = [](const at::Tensor& t) {
    return cuda::RopeAppend::Source{t.data_ptr(), t.stride(0), t.stride(1)};
  };
  return cuda::RopeAppend{src(q),
                          src(k),
                          src(v),
                          cos.data_ptr(),
                          sin.data_ptr(),
                          cos.dim() == 3 ? q.size(1) * d : 0,
                          nullptr,
                          kc.data_ptr(),
                          vc.data_ptr(),
                          cols.data_ptr<int64_t>(),
                          q.size(0),
                          q.size(1),
                          q.size(2),
                          k.size(2),
                          d,
                          kc.size(2)};
}

}  // namespace
#endif

at::Tensor rope_append(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& kc,
                       const at::Tensor& vc, const at::Tensor& cols) {
  check(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && kc.dim() == 4 &&
            kc.sizes() == vc.sizes() && kc.size(0) == q.size(0) && kc.size(1) == k.size(2) &&
            kc.size(3) == q.size(3) && k.size(3) == q.size(3) && k.size(1) == q.size(1) &&
            k.size(0) == q.size(0) && cols.dim() == 1 && cols.size(0) == q.size(1) &&
            cos.sizes() == sin.sizes() &&
            (cos.dim() == 2 || (cos.dim() == 3 && cos.size(0) == q.size(0))) &&
            cos.size(-2) == q.size(1) && cos.size(-1) == q.size(3),
        "rope_append: q [B, T, nq, d], k and v [B, T, nkv, d], caches [B, nkv, C, d], cols [T], "
        "cos/sin [T, d] or [B, T, d]");
#if KLDQ_WITH_CUDA_BUILD
  if (auto a = rope_append_args(q, k, v, cos, sin, kc, vc, cols)) {
    const c10::cuda::CUDAGuard guard(q.device());
    at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous [B, T, nq, d]
    a->q_out = out.data_ptr();
    const auto t = cuda_dtype(q.scalar_type());
    if (cuda::rope_append_fits(t, *a)) {
      cuda::rope_append(t, *a, stream_of(q));
      return out;
    }
  }
#endif
  at::Tensor out = rope(q, cos, sin);
  kc.index_copy_(2, cols, rope(k, cos, sin).transpose(1, 2));
  vc.index_copy_(2, cols, v.transpose(1, 2));
  return out;
}

namespace {

StepInputs step_inputs_reference(const at::Tensor& cols, const at::Tensor& pad,
                                 const at::Tensor& cos, const at::Tensor& sin, int64_t K,
                                 bool with_mask) {
  const int64_t B = pad.size(0), T = cols.size(0), d = cos.size(1);
  const at::Tensor p = pad.view({B, 1, 1}), c = cols.view({1, T, 1});  // [B, 1, 1], [1, T, 1]
  const at::Tensor pos = (c - p).clamp_min(0).flatten();               // [B T]
  StepInputs r{
      cos.index_select(0, pos).view({B, T, d}), sin.index_select(0, pos).view({B, T, d}), {}};
  if (with_mask) {
    const at::Tensor keys = at::arange(K, cols.options()).view({1, 1, K});  // [1, 1, K]
    const at::Tensor real = (keys >= p).logical_and(keys <= c);             // [B, T, K]
    const at::Tensor self_pad = (c < p).logical_and(keys == c);             // [B, T, K]
    const at::Tensor unseen = real.logical_or(self_pad).logical_not().unsqueeze(1);
    r.mask = at::zeros({B, 1, T, K}, cos.options())
                 .masked_fill_(unseen, -std::numeric_limits<double>::infinity());
  }
  return r;
}

}  // namespace

StepInputs step_inputs(const at::Tensor& cols, const at::Tensor& pad, const at::Tensor& cos,
                       const at::Tensor& sin, int64_t K, bool with_mask) {
  check(cols.dim() == 1 && pad.dim() == 1 && cols.scalar_type() == at::kLong &&
            pad.scalar_type() == at::kLong && cos.dim() == 2 && sin.sizes() == cos.sizes() &&
            K >= 0 && cols.device() == cos.device(),
        "step_inputs: cols [T] and pad [B] int64 on the device of tables cos/sin [len, d]");
  check_like(cols, pad, "step_inputs");
  check_like(cos, sin, "step_inputs");
#if KLDQ_WITH_CUDA_BUILD
  if (use_cuda(cos) && !records_grad({&cos, &sin})) {
    const c10::cuda::CUDAGuard guard(cos.device());
    const int64_t B = pad.size(0), T = cols.size(0), d = cos.size(1);
    const at::Tensor c = cols.contiguous(), p = pad.contiguous();
    const at::Tensor ct = cos.contiguous(), st = sin.contiguous();
    StepInputs r{at::empty({B, T, d}, ct.options()), at::empty({B, T, d}, ct.options()),
                 with_mask ? at::empty({B, 1, T, K}, ct.options()) : at::Tensor()};
    cuda::step_inputs(cuda_dtype(ct.scalar_type()),
                      {c.data_ptr<int64_t>(), p.data_ptr<int64_t>(), ct.data_ptr(), st.data_ptr(),
                       r.cos.data_ptr(), r.sin.data_ptr(), with_mask ? r.mask.data_ptr() : nullptr,
                       B, T, d, K, ct.size(0)},
                      stream_of(ct));
    return r;
  }
#endif
  return step_inputs_reference(cols, pad, cos, sin, K, with_mask);
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  check(gate_up.dim() >= 1 && gate_up.size(-1) > 0 && gate_up.size(-1) % 2 == 0,
        "silu_mul: last dimension must be 2 I > 0");
  const int64_t i = gate_up.size(-1) / 2;
#if KLDQ_WITH_CUDA_BUILD
  if (use_cuda(gate_up) && !records_grad({&gate_up})) {
    const c10::cuda::CUDAGuard guard(gate_up.device());
    const at::Tensor gu = gate_up.contiguous();
    auto sizes = gu.sizes().vec();
    sizes.back() = i;
    at::Tensor out = at::empty(sizes, gu.options());
    const auto* g = static_cast<const char*>(gu.data_ptr());
    cuda::silu_mul(cuda_dtype(gu.scalar_type()), g, g + i * gu.element_size(), out.data_ptr(),
                   gu.numel() / (2 * i), i, 2 * i, stream_of(gu));
    return out;
  }
#endif
  return at::silu(gate_up.narrow(-1, 0, i)) * gate_up.narrow(-1, i, i);
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  check(gate.sizes() == up.sizes() && gate.dim() >= 1 && gate.size(-1) > 0,
        "silu_mul: gate and up must have one shape");
  check_like(gate, up, "silu_mul");
#if KLDQ_WITH_CUDA_BUILD
  if (use_cuda(gate) && !records_grad({&gate, &up})) {
    const c10::cuda::CUDAGuard guard(gate.device());
    const at::Tensor g = gate.contiguous(), u = up.contiguous();
    at::Tensor out = at::empty(g.sizes(), g.options());
    const int64_t i = g.size(-1);
    cuda::silu_mul(cuda_dtype(g.scalar_type()), g.data_ptr(), u.data_ptr(), out.data_ptr(),
                   g.numel() / i, i, i, stream_of(g));
    return out;
  }
#endif
  // In place saves a buffer; while autograd records, out of place keeps the operands for backward.
  return gate.requires_grad() || up.requires_grad() ? at::silu(gate) * up : at::silu(gate).mul_(up);
}

}  // namespace kldq::kernels
