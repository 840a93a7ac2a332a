// The checkpoint an export reads: a quantized checkpoint kldq wrote, or a plain one, checked as
// `kldq eval` checks it (headers, formats, shapes) before anything is written.
#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/export/export.hpp"
#include "kldq/model/foreign.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/model/weight_store.hpp"

namespace kldq::exporting {

Target parse_target(const std::string& text, const std::string& what) {
  if (text == "compressed-tensors") return Target::COMPRESSED_TENSORS;
  if (text == "gguf") return Target::GGUF;
  throw ConfigError(
      fmt::format("{}: unknown export target '{}' (compressed-tensors or gguf)", what, text));
}

const char* target_name(Target t) {
  return t == Target::GGUF ? "gguf" : "compressed-tensors";
}

Source::Source(const std::filesystem::path& dir)
    : dir_(dir),
      config_(model::load_config(dir / "config.json")),
      ck_(model::open_checkpoint(dir)),
      formats_(model::read_layer_formats(ck_, config_)),
      scaled_(model::read_input_scaled(ck_, formats_)),
      slots_(model::expected_tensors(config_, formats_, scaled_)) {
  model::WeightStore(ck_, c10::kCPU, c10::kFloat).validate(slots_);
}

formats::PackedWeight Source::packed(const std::string& layer) const {
  const auto f = formats_.find(layer);
  check(f != formats_.end(), "Source::packed: not a quantized layer");
  const auto id = model::LayerId::parse(layer);
  const std::vector<int64_t> shape = model::linear_shape(config_, id->proj);
  std::vector<at::Tensor> parts;
  for (const auto& part : formats::packed_layout(f->second, shape[0], shape[1]))
    parts.push_back(ck_.tensor(layer + "." + part.suffix));
  formats::PackedWeight p = formats::PackedWeight::from_parts(f->second, shape[0], shape[1], parts);
  p.check_values(fmt::format("{}: layer '{}'", dir_.string(), layer));
  return p;
}

}  // namespace kldq::exporting
