// QLinear: the linear layer every decoder projection runs through, y = (x / s) W^T + b, with W
// stored dense (bf16/fp16/fp32) or packed in a format (formats::PackedWeight), and s an optional
// per-input-channel scale (AWQ keeps its scales here instead of folding them into neighbouring
// layers, so every layer stays independently restorable). Packed layers dequantize into a
// workspace shared by the decoder's layers, then run one GEMM.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kldq/formats/packed.hpp"
#include "kldq/kernels/dequant.hpp"

namespace kldq::model {

class QLinear {
 public:
  QLinear() = default;
  // Dense: weight [out, in]; bias [out] or undefined. Both on the compute device and dtype.
  QLinear(at::Tensor weight, at::Tensor bias);
  // Packed: `packed` on the compute device; bias [out] (or undefined) in the compute `dtype`.
  // Dense formats (bf16, fp16) are held as a dense weight converted to `dtype`. `workspace` may
  // be null (each forward then allocates its dequantized weight).
  QLinear(formats::PackedWeight packed, at::Tensor bias, at::ScalarType dtype,
          std::shared_ptr<kernels::Workspace> workspace);

  // s: [in] in the compute dtype, > 0; forward then computes (x / s) W^T + b.
  void set_input_scale(at::Tensor s);

  // x: [..., in] -> [..., out], in x's dtype.
  at::Tensor forward(const at::Tensor& x) const;
  // silu(gate) * up of a concatenated gate/up layer (rows [gate; up]): [..., in] -> [..., out / 2],
  // kernels::silu_mul(forward(x)) value for value; a packed layer whose product takes the fused
  // kernel applies the SwiGLU in its epilogue (no second kernel, no [..., out] intermediate).
  at::Tensor swiglu(const at::Tensor& x) const;
  // Whether forward(x) multiplies by the stored weight as it is: dense, or packed through the
  // fused dequantize + product kernel (no dequantized copy in the workspace).
  bool direct(const at::Tensor& x) const;

  // Layers sharing one input (q/k/v, gate/up) as one [sum(out), in] layer, so a decode step reads
  // them in one product: dense weights of one dtype, or one packed format whose rows split
  // (PackedWeight::rows_split), with biases on all or none and equal input scales or none; new
  // tensors on the first one's device. nullopt when they do not agree.
  static std::optional<QLinear> concat(const std::vector<const QLinear*>& layers);
  // Rows [begin, begin + n) as a layer viewing this one's tensors (its format, workspace and
  // input scale kept): the members of a concatenated group.
  QLinear rows(int64_t begin, int64_t n) const;
  // Constructed with a weight (a default QLinear is not).
  bool defined() const { return out_ > 0; }

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  bool is_packed() const { return !weight_.defined() && packed_.codes.defined(); }
  // The same layer with `f` applied to each of its tensors (weight or packed parts, bias, input
  // scale); the workspace is shared. Moves a layer between host and device.
  QLinear map(const std::function<at::Tensor(const at::Tensor&)>& f) const;
  // The dense weight [out, in]; undefined for packed layers.
  const at::Tensor& weight() const { return weight_; }
  const formats::PackedWeight& packed() const { return packed_; }
  const at::Tensor& bias() const { return bias_; }
  const at::Tensor& input_scale() const { return input_scale_; }
  bool has_bias() const { return bias_.defined(); }
  // The weight as the forward uses it: [out, in] in `dtype` (dequantized when packed).
  at::Tensor effective_weight(at::ScalarType dtype) const;
  // Format name: the packed format, or the dense weight's dtype ("bf16", "fp16", "fp32").
  std::string format_name() const;
  // Exact bytes of the weight alone: codes + scales + zeros; for a dense format (bf16, fp16) its
  // storage, whatever dtype the forward computes in; for an unformatted weight its tensor.
  uint64_t weight_bytes() const;
  // Bytes of the layer: weight_bytes(), bias and input scale.
  uint64_t bytes() const;

 private:
  int64_t out_ = 0, in_ = 0;
  at::Tensor weight_;             // [out, in] compute dtype; undefined when packed
  formats::PackedWeight packed_;  // the stored format (dense formats: spec only, no tensors)
  at::Tensor bias_;               // [out] or undefined
  at::Tensor input_scale_;        // [in] or undefined
  bool has_format_ = false;       // constructed from a PackedWeight
  std::shared_ptr<kernels::Workspace> workspace_;
};

}  // namespace kldq::model
