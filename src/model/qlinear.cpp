// QLinear: dense GEMM (cuBLAS / CPU BLAS through at::linear); for packed weights the fused
// dequantize + GEMV kernel when a CUDA input has at most 16 rows (4 in fp32; decode steps), else
// dequantize into the shared workspace (kernels::dequantize_into) followed by the same GEMM.
#include "kldq/model/qlinear.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/core/error.hpp"

namespace kldq::model {
namespace {

bool dense_format(formats::Format f) {
  return f == formats::Format::BF16 || f == formats::Format::FP16;
}

void check_bias(const at::Tensor& bias, int64_t out) {
  check(!bias.defined() || (bias.dim() == 1 && bias.size(0) == out), "QLinear bias must be [out]");
}

}  // namespace

QLinear::QLinear(at::Tensor weight, at::Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  check(weight_.dim() == 2, "QLinear weight must be [out, in]");
  out_ = weight_.size(0);
  in_ = weight_.size(1);
  check_bias(bias_, out_);
}

QLinear::QLinear(formats::PackedWeight packed, at::Tensor bias, at::ScalarType dtype,
                 std::shared_ptr<kernels::Workspace> workspace)
    : out_(packed.out), in_(packed.in), bias_(std::move(bias)), workspace_(std::move(workspace)) {
  check_bias(bias_, out_);
  if (dense_format(packed.spec.format)) {
    weight_ = packed.codes.to(dtype);
    packed.codes = at::Tensor();  // the format is remembered; the tensor lives in weight_
  }
  packed_ = std::move(packed);
  has_format_ = true;
}

void QLinear::set_input_scale(at::Tensor s) {
  check(s.dim() == 1 && s.size(0) == in_, "QLinear input scale must be [in]");
  input_scale_ = std::move(s);
}

QLinear QLinear::map(const std::function<at::Tensor(const at::Tensor&)>& f) const {
  QLinear q = *this;
  if (weight_.defined()) q.weight_ = f(weight_);
  q.packed_ = packed_.map(f);
  if (bias_.defined()) q.bias_ = f(bias_);
  if (input_scale_.defined()) q.input_scale_ = f(input_scale_);
  return q;
}

at::Tensor QLinear::effective_weight(at::ScalarType dtype) const {
  return is_packed() ? kernels::dequantize(packed_, dtype) : weight_.to(dtype);
}

at::Tensor QLinear::forward(const at::Tensor& x) const {
  const at::Tensor xs = input_scale_.defined() ? x / input_scale_ : x;
  // A few rows (a decode step): each packed weight read once, no bf16 copy in the workspace.
  if (is_packed() && kernels::gemv_applies(packed_, xs, bias_))
    return kernels::gemv(packed_, xs, bias_);
  at::Tensor w = weight_;  // [out, in] in x's dtype
  if (is_packed()) {
    w = workspace_ ? workspace_->get(out_ * in_, x.scalar_type(), x.device()).view({out_, in_})
                   : at::empty({out_, in_}, x.options());
    kernels::dequantize_into(packed_, w);
  }
  return bias_.defined() ? at::linear(xs, w, bias_) : at::linear(xs, w);
}

std::string QLinear::format_name() const {
  if (has_format_) return packed_.spec.name();
  const auto t = weight_.scalar_type();
  return t == at::kBFloat16 ? "bf16" : t == at::kHalf ? "fp16" : "fp32";
}

uint64_t QLinear::weight_bytes() const {
  if (is_packed()) return packed_.bytes();
  // A dense format (bf16, fp16) counts its own storage, not the copy widened to the compute
  // dtype (fp32 on the CPU), so that plans compare the same on every device.
  return has_format_ ? packed_.spec.bytes(out_, in_) : weight_.nbytes();
}

uint64_t QLinear::bytes() const {
  uint64_t n = weight_bytes();
  if (bias_.defined()) n += bias_.nbytes();
  if (input_scale_.defined()) n += input_scale_.nbytes();
  return n;
}

}  // namespace kldq::model
