// WeightStore: hands out a checkpoint's tensors by HF name with the expected shape, converted to
// the compute device and dtype, and fails when a tensor is missing, misshapen or left unused.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "kldq/io/checkpoint.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"

namespace kldq::model {

// IoError naming `what` (file and tensor) when a floating tensor holds NaN or Inf: weights and
// scales are checked as they load, so a broken checkpoint fails there instead of reporting a NaN
// perplexity. `stored`, when given, is the tensor before conversion: a finite one that became
// infinite overflowed the compute dtype, and the message says so.
void check_finite(const at::Tensor& t, const std::string& what, const at::Tensor* stored = nullptr);

class WeightStore {
 public:
  WeightStore(const io::Checkpoint& checkpoint, c10::Device device, c10::ScalarType dtype);

  bool has(const std::string& name) const { return checkpoint_.contains(name); }
  std::string dir() const { return checkpoint_.dir().string(); }
  // Checks that every slot exists with its shape and a float dtype, reading headers only, so a
  // mismatched checkpoint fails before any buffer is allocated.
  void validate(const std::vector<TensorSlot>& slots) const;
  // The tensor as stored (CPU view of the file), after checking its shape and its dtype (exactly
  // `dtype` when given, else any float); marks it used.
  at::Tensor take_raw(const std::string& name, const std::vector<int64_t>& shape,
                      std::optional<at::ScalarType> dtype = std::nullopt);
  // A packed-weight part: take_raw with an exact dtype, copied to the store's device unconverted.
  at::Tensor take_part(const std::string& name, const std::vector<int64_t>& shape,
                       at::ScalarType dtype);
  // take_raw, converted to the store's device and dtype.
  at::Tensor take(const std::string& name, const std::vector<int64_t>& shape);
  // Copies `name` (converted) into `dst`, which has the expected shape: fills fused buffers.
  void take_into(const std::string& name, const at::Tensor& dst);
  // Accepts the tensors a checkpoint may carry that kldq derives instead: RoPE inv_freq buffers
  // (older transformers saved them) and, under tie_word_embeddings, an lm_head.weight that must
  // equal the embedding (a differing one means a broken conversion: IoError).
  void accept_derived(const ModelConfig& config);
  // Throws IoError naming the unused tensors, if any.
  void finish() const;

  // Where the next tensors go: `device`, in pinned host memory when `pinned` (streamed blocks).
  void set_target(c10::Device device, bool pinned);
  c10::Device device() const { return device_; }
  bool pinned() const { return pinned_; }
  c10::ScalarType dtype() const { return dtype_; }

 private:
  const io::TensorInfo& checked(const std::string& name, const std::vector<int64_t>& shape,
                                std::optional<at::ScalarType> dtype) const;
  std::string where(const std::string& name) const;                       // "DIR: tensor 'NAME'"
  at::Tensor convert(const at::Tensor& raw, at::ScalarType dtype) const;  // a copy on the target

  const io::Checkpoint& checkpoint_;
  c10::Device device_;
  c10::ScalarType dtype_;
  bool pinned_ = false;
  std::set<std::string> used_;
};

}  // namespace kldq::model
