// QLinear: dense GEMM (cuBLAS / CPU BLAS through at::linear); for packed weights the fused
// dequantize + GEMV kernel when a CUDA input has at most 16 rows (4 in fp32; decode steps), else
// dequantize into the shared workspace (kernels::dequantize_into) followed by the same GEMM.
// Layers sharing an input concatenate by rows into one layer whose members are row views.
#include "kldq/model/qlinear.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/kernels/fused.hpp"

namespace kldq::model {
namespace {

bool dense_format(formats::Format f) {
  return f == formats::Format::BF16 || f == formats::Format::FP16;
}

void check_bias(const at::Tensor& bias, int64_t out) {
  check(!bias.defined() || (bias.dim() == 1 && bias.size(0) == out), "QLinear bias must be [out]");
}

// x / s with an input scale s (AWQ), else x: what the layer's weight multiplies.
at::Tensor scaled_input(const at::Tensor& x, const at::Tensor& s) {
  return s.defined() ? x / s : x;
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
  const at::Tensor xs = scaled_input(x, input_scale_);
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

at::Tensor QLinear::swiglu(const at::Tensor& x) const {
  if (is_packed()) {
    const at::Tensor xs = scaled_input(x, input_scale_);
    if (kernels::gemv_swiglu_applies(packed_, xs, bias_))
      return kernels::gemv_swiglu(packed_, xs, bias_);
  }
  return kernels::silu_mul(forward(x));
}

bool QLinear::direct(const at::Tensor& x) const {
  if (!is_packed()) return true;
  // forward() tests x / s, which keeps x's dtype (and is contiguous) when s has x's dtype.
  if (input_scale_.defined() && input_scale_.scalar_type() != x.scalar_type()) return false;
  return kernels::gemv_applies(packed_, x, bias_);
}

std::optional<QLinear> QLinear::concat(const std::vector<const QLinear*>& layers) {
  if (layers.empty()) return std::nullopt;
  const QLinear& first = *layers.front();
  std::vector<const formats::PackedWeight*> packed;
  std::vector<at::Tensor> weights, biases;
  auto device = [](const QLinear& l) {
    return (l.weight_.defined() ? l.weight_ : l.packed_.codes).device();
  };
  for (const QLinear* l : layers) {
    const bool same_kind = l->is_packed() == first.is_packed() && device(*l) == device(first) &&
                           l->has_format_ == first.has_format_ && l->in_ == first.in_ &&
                           l->has_bias() == first.has_bias() &&
                           (!l->has_format_ || l->packed_.spec == first.packed_.spec);
    const bool same_scale =
        l->input_scale_.defined() == first.input_scale_.defined() &&
        (!l->input_scale_.defined() || l->input_scale_.is_same(first.input_scale_) ||
         (l->input_scale_.device() == first.input_scale_.device() &&
          at::equal(l->input_scale_, first.input_scale_)));
    if (!same_kind || !same_scale) return std::nullopt;
    if (l->weight_.defined()) {
      if (l->weight_.scalar_type() != first.weight_.scalar_type()) return std::nullopt;
      weights.push_back(l->weight_);
    }
    packed.push_back(&l->packed_);
    if (l->has_bias()) biases.push_back(l->bias_);
  }
  QLinear q = first;
  if (first.is_packed()) {
    auto p = formats::PackedWeight::concat_rows(packed);
    if (!p) return std::nullopt;
    q.packed_ = std::move(*p);
  } else {
    q.weight_ = at::cat(weights, 0);  // [sum(out), in]
  }
  q.out_ = 0;
  for (const QLinear* l : layers) q.out_ += l->out_;
  if (!first.is_packed()) q.packed_.out = q.out_;  // a dense format keeps its spec only
  if (first.has_bias()) q.bias_ = at::cat(biases, 0);
  return q;
}

QLinear QLinear::rows(int64_t begin, int64_t n) const {
  check(begin >= 0 && n > 0 && begin + n <= out_, "QLinear::rows: rows out of range");
  QLinear q = *this;
  q.out_ = n;
  if (weight_.defined()) {
    q.weight_ = weight_.narrow(0, begin, n);
    q.packed_.out = n;  // a dense format keeps its spec only
  } else {
    q.packed_ = packed_.rows(begin, n);
  }
  if (bias_.defined()) q.bias_ = bias_.narrow(0, begin, n);
  return q;
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
