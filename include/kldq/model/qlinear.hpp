// QLinear: the linear layer every decoder projection runs through, y = x W^T + b.
// This storage is dense (bf16/fp16/fp32); packed formats plug in behind the same
// interface, so the decoder never needs to know how a layer is stored.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace kldq::model {

class QLinear {
 public:
  QLinear() = default;
  // weight: [out, in]; bias: [out] or undefined. Both on the compute device and dtype.
  QLinear(at::Tensor weight, at::Tensor bias);

  // x: [..., in] -> [..., out], in x's dtype.
  at::Tensor forward(const at::Tensor& x) const;

  int64_t in_features() const { return weight_.size(1); }
  int64_t out_features() const { return weight_.size(0); }
  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }
  bool has_bias() const { return bias_.defined(); }
  // Exact bytes held (weight + bias).
  uint64_t bytes() const;

 private:
  at::Tensor weight_;  // [out, in], compute dtype
  at::Tensor bias_;    // [out] or undefined
};

}  // namespace kldq::model
