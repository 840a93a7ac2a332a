// The checkpoint an export reads: a quantized checkpoint kldq wrote, or a plain one, checked as
// `kldq eval` checks it (headers, formats, shapes) before anything is written.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/export/export.hpp"
#include "kldq/model/foreign.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/model/weight_store.hpp"

namespace kldq::exporting {
namespace {

// "model.layers.0.mlp.up_proj.weight" -> "model.layers.0.mlp.up_proj".
std::string layer_of(const std::string& tensor) {
  return tensor.substr(0, tensor.rfind('.'));
}

}  // namespace

Target parse_target(const std::string& text, const std::string& what) {
  return kTargets.parse(text, what);
}

const char* target_name(Target t) {
  return kTargets.name(t);
}

Source::Source(const std::filesystem::path& dir)
    : dir_(dir),
      config_(model::load_config(dir / "config.json")),
      ck_(model::open_checkpoint(dir)),
      formats_(model::read_layer_formats(ck_, config_)),
      slots_(model::expected_tensors(config_, formats_)) {
  const std::set<std::string> scaled = model::read_input_scaled(ck_, formats_);
  model::WeightStore(ck_, c10::kCPU, c10::kFloat)
      .validate(model::expected_tensors(config_, formats_, scaled));
  fold_input_scales(scaled);
}

at::Tensor Source::tensor(const std::string& name) const {
  const auto f = folded_tensors_.find(name);
  // Folded norm weights stay fp32 (fold.cpp: a few KiB that would otherwise round to bf16);
  // folded linear weights and biases round to their stored dtype (and may overflow fp16).
  const at::Tensor t = f == folded_tensors_.end() ? ck_.tensor(name)
                       : model::LayerId::parse(layer_of(name))
                           ? f->second.to(ck_.info(name).scalar_type)
                           : f->second;
  model::check_finite(t, fmt::format("{}: tensor '{}'", dir_.string(), name));
  return t;
}

at::Tensor Source::tensor_f32(const std::string& name) const {
  const auto f = folded_tensors_.find(name);
  return f == folded_tensors_.end() ? tensor(name).to(at::kFloat) : f->second;
}

formats::PackedWeight Source::packed(const std::string& layer) const {
  if (const auto f = folded_packed_.find(layer); f != folded_packed_.end()) return f->second;
  const auto f = formats_.find(layer);
  check(f != formats_.end(), "Source::packed: not a quantized layer");
  const auto id = model::LayerId::parse(layer);
  const std::vector<int64_t> shape = model::linear_shape(config_, id->proj);
  std::vector<at::Tensor> parts;
  for (const auto& part : formats::packed_layout(f->second, shape[0], shape[1]))
    parts.push_back(ck_.tensor(layer + "." + part.suffix));
  formats::PackedWeight p = formats::PackedWeight::from_parts(f->second, shape[0], shape[1], parts);
  const std::string where = fmt::format("{}: layer '{}'", dir_.string(), layer);
  p.check_values(where);
  // As the decoder's loader checks them: an exported NaN or Inf would be served as garbage.
  for (const at::Tensor& t : p.parts())
    if (at::isFloatingType(t.scalar_type()) && !at::isfinite(t.to(at::kFloat)).all().item<bool>())
      throw IoError(fmt::format("{}: holds NaN or Inf values", where));
  return p;
}

}  // namespace kldq::exporting
