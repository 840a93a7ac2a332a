// WeightStore: checked, converted access to checkpoint tensors, with leftover detection.
#include "kldq/model/weight_store.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kldq/core/error.hpp"

namespace kldq::model {

void check_finite(const at::Tensor& t, const std::string& what, const at::Tensor* stored) {
  if (!at::isFloatingType(t.scalar_type()) || t.numel() == 0) return;
  // libtorch has no isfinite for the 8-bit floats: check their values widened (exact).
  const bool narrow = c10::elementSize(t.scalar_type()) == 1;
  const at::Tensor v = narrow ? t.to(at::kFloat) : t;
  if (at::isfinite(v).all().item<bool>()) return;  // one reduction and one sync per tensor
  const int64_t nan = at::isnan(v).sum().item<int64_t>();
  const int64_t inf = at::isinf(v).sum().item<int64_t>();
  const bool overflow = stored && at::isfinite(*stored).all().item<bool>();
  throw IoError(fmt::format("{}: {} NaN and {} infinite value(s){}", what, nan, inf,
                            overflow ? fmt::format(" after conversion to {} (the stored values "
                                                   "overflow it: use --dtype bf16 or fp32)",
                                                   c10::toString(t.scalar_type()))
                                     : ""));
}

WeightStore::WeightStore(const io::Checkpoint& checkpoint, c10::Device device,
                         c10::ScalarType dtype)
    : checkpoint_(checkpoint), device_(device), dtype_(dtype) {}

const io::TensorInfo& WeightStore::checked(const std::string& name,
                                           const std::vector<int64_t>& shape,
                                           std::optional<at::ScalarType> dtype) const {
  const io::TensorInfo& info = checkpoint_.info(name);  // IoError naming the tensor when missing
  if (info.shape != shape)
    throw IoError(fmt::format("{}: tensor '{}' has shape [{}], expected [{}] from config.json{}",
                              checkpoint_.dir().string(), name, fmt::join(info.shape, ", "),
                              fmt::join(shape, ", "), dtype ? " and the layer's format" : ""));
  const auto t = info.scalar_type;
  if (dtype) {
    if (t != *dtype)
      throw IoError(fmt::format("{}: tensor '{}' has dtype {}, expected {} for the layer's format",
                                checkpoint_.dir().string(), name, info.dtype,
                                io::safetensors_dtype_name(*dtype)));
    return info;
  }
  if (t != c10::kBFloat16 && t != c10::kHalf && t != c10::kFloat)
    throw IoError(fmt::format("{}: tensor '{}' has dtype {}, expected BF16, F16 or F32",
                              checkpoint_.dir().string(), name, info.dtype));
  return info;
}

void WeightStore::validate(const std::vector<TensorSlot>& slots) const {
  for (const auto& slot : slots) checked(slot.name, slot.shape, slot.dtype);
}

at::Tensor WeightStore::take_raw(const std::string& name, const std::vector<int64_t>& shape,
                                 std::optional<at::ScalarType> dtype) {
  checked(name, shape, dtype);
  used_.insert(name);
  return checkpoint_.tensor(name);
}

void WeightStore::set_target(c10::Device device, bool pinned) {
  device_ = device;
  pinned_ = pinned;
}

at::Tensor WeightStore::convert(const at::Tensor& raw, at::ScalarType dtype) const {
  // Pinned: allocated pinned and filled from the file mapping, no intermediate copy.
  if (pinned_)
    return at::empty(raw.sizes(), raw.options().dtype(dtype).pinned_memory(true)).copy_(raw);
  // copy=true: never alias the file mapping, even when device and dtype already match.
  return raw.to(device_, dtype, /*non_blocking=*/false, /*copy=*/true);
}

at::Tensor WeightStore::take(const std::string& name, const std::vector<int64_t>& shape) {
  const at::Tensor raw = take_raw(name, shape);
  at::Tensor t = convert(raw, dtype_);
  check_finite(t, where(name), &raw);
  return t;
}

at::Tensor WeightStore::take_part(const std::string& name, const std::vector<int64_t>& shape,
                                  at::ScalarType dtype) {
  at::Tensor t = convert(take_raw(name, shape, dtype), dtype);
  check_finite(t, where(name));  // scales and zero points; integer codes are skipped
  return t;
}

void WeightStore::take_into(const std::string& name, const at::Tensor& dst) {
  const at::Tensor raw = take_raw(name, dst.sizes().vec());
  dst.copy_(raw);
  check_finite(dst, where(name), &raw);
}

std::string WeightStore::where(const std::string& name) const {
  return fmt::format("{}: tensor '{}'", checkpoint_.dir().string(), name);
}

void WeightStore::accept_derived(const ModelConfig& config) {
  for (const auto& name : checkpoint_.names())
    if (name.ends_with(".rotary_emb.inv_freq")) used_.insert(name);
  if (!config.tie_word_embeddings || !has("lm_head.weight")) return;
  const std::vector<int64_t> shape{config.vocab_size, config.hidden_size};
  const at::Tensor head = take_raw("lm_head.weight", shape);
  const at::Tensor embed = checkpoint_.tensor("model.embed_tokens.weight");
  if (embed.sizes() != head.sizes() || !at::equal(head, embed.to(head.scalar_type())))
    throw IoError(fmt::format(
        "{}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight",
        checkpoint_.dir().string()));
}

void WeightStore::finish() const {
  std::vector<std::string> left;
  for (const auto& name : checkpoint_.names())
    if (!used_.count(name)) left.push_back(name);
  if (left.empty()) return;
  const size_t shown = std::min<size_t>(left.size(), 5);
  throw IoError(
      fmt::format("{}: {} tensor(s) not used by the architecture config.json describes: {}{}",
                  checkpoint_.dir().string(), left.size(),
                  fmt::join(left.begin(), left.begin() + static_cast<std::ptrdiff_t>(shown), ", "),
                  left.size() > shown ? ", ..." : ""));
}

}  // namespace kldq::model
