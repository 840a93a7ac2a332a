// QLinear dense path: one GEMM (cuBLAS / CPU BLAS through at::linear).
#include "kldq/model/qlinear.hpp"

#include <ATen/ATen.h>

#include "kldq/core/error.hpp"

namespace kldq::model {

QLinear::QLinear(at::Tensor weight, at::Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  check(weight_.dim() == 2, "QLinear weight must be [out, in]");
  check(!bias_.defined() || (bias_.dim() == 1 && bias_.size(0) == weight_.size(0)),
        "QLinear bias must be [out]");
}

at::Tensor QLinear::forward(const at::Tensor& x) const {
  return bias_.defined() ? at::linear(x, weight_, bias_) : at::linear(x, weight_);
}

uint64_t QLinear::bytes() const {
  return weight_.nbytes() + (bias_.defined() ? bias_.nbytes() : 0);
}

}  // namespace kldq::model
