// Reading and cross-checking the format metadata of quantized checkpoints.
#include "kldq/model/quantized.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "kldq/core/error.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::model {
namespace {

formats::FormatSpec parse_format(const std::string& text, const std::string& where) {
  try {
    return formats::FormatSpec::parse(text, where);
  } catch (const Error& e) {  // a bad name inside a data file is an I/O error, not a usage one
    throw IoError(e.what());
  }
}

LayerFormats parse_formats(const std::string& json_text, const std::string& where,
                           const ModelConfig& config) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("{}: invalid JSON ({})", where, e.what()));
  }
  if (!j.is_object()) throw IoError(fmt::format("{}: expected an object {{layer: format}}", where));
  LayerFormats out;
  for (const auto& [layer, value] : j.items()) {
    const auto id = LayerId::parse(layer);
    if (!id || id->block >= config.num_layers)
      throw IoError(fmt::format("{}: '{}' is not a linear layer of this model ({} blocks)", where,
                                layer, config.num_layers));
    if (!value.is_string())
      throw IoError(fmt::format("{}: format of '{}' is not a string", where, layer));
    out[layer] = parse_format(value.get<std::string>(), fmt::format("{}: {}", where, layer));
  }
  return out;
}

}  // namespace

LayerFormats read_layer_formats(const io::Checkpoint& ck, const ModelConfig& config) {
  // Another tool's checkpoint translated by open_checkpoint (model/foreign.hpp).
  if (const auto o = ck.overlay_metadata().find(kFormatsKey); o != ck.overlay_metadata().end())
    return parse_formats(o->second, (ck.dir() / "config.json").string() + ": quantization_config",
                         config);
  LayerFormats formats;
  for (const auto& file : ck.files()) {
    const auto it = file->metadata().find(kFormatsKey);
    if (it == file->metadata().end()) continue;
    const std::string where =
        fmt::format("{}: header metadata '{}'", file->path().string(), kFormatsKey);
    for (auto& [layer, spec] : parse_formats(it->second, where, config)) {
      const auto [pos, fresh] = formats.emplace(layer, spec);
      if (!fresh && pos->second.name() != spec.name())
        throw IoError(fmt::format("{}: layer '{}' is {} here but {} in another file", where, layer,
                                  spec.name(), pos->second.name()));
    }
  }
  if (formats.empty()) {
    for (const auto& name : ck.names())
      if (name.ends_with(".weight_packed") || name.ends_with(".weight_scale"))
        throw IoError(fmt::format(
            "{}: tensor '{}' is part of a packed weight, but no safetensors header carries the "
            "'{}' metadata that names its format",
            ck.dir().string(), name, kFormatsKey));
    return formats;
  }
  const std::filesystem::path plan = ck.dir() / kPlanFile;
  if (std::filesystem::exists(plan)) {
    const nlohmann::json j = io::read_json_file(plan);
    if (!j.is_object() || !j.contains("layers"))
      throw IoError(fmt::format("{}: missing the 'layers' object", plan.string()));
    const LayerFormats planned =
        parse_formats(j["layers"].dump(), fmt::format("{}: layers", plan.string()), config);
    for (const auto& [layer, spec] : formats) {
      const auto p = planned.find(layer);
      if (p == planned.end() || p->second.name() != spec.name())
        throw IoError(fmt::format("{}: layer '{}' is {} in the safetensors header but {} here",
                                  plan.string(), layer, spec.name(),
                                  p == planned.end() ? "absent" : p->second.name()));
    }
    if (planned.size() != formats.size())
      throw IoError(fmt::format("{}: lists {} layers, the safetensors headers {}", plan.string(),
                                planned.size(), formats.size()));
  }
  return formats;
}

std::set<std::string> read_input_scaled(const io::Checkpoint& ck, const LayerFormats& formats) {
  static const std::string kSuffix = ".input_scale";
  std::set<std::string> layers;
  for (const auto& name : ck.names()) {
    if (!name.ends_with(kSuffix)) continue;
    const std::string layer = name.substr(0, name.size() - kSuffix.size());
    if (!formats.count(layer))
      throw IoError(
          fmt::format("{}: tensor '{}' scales the inputs of a layer that is not quantized",
                      ck.dir().string(), name));
    layers.insert(layer);
  }
  return layers;
}

}  // namespace kldq::model
