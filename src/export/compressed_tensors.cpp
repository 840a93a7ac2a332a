// Export to compressed-tensors (the checkpoint format of llm-compressor, loaded by vLLM and by
// transformers with the compressed-tensors package; github.com/vllm-project/compressed-tensors,
// compressors/ and quantization/quant_config.py). Every mapping is exact (same codes, same
// scales); formats without an equivalent are refused. docs/FORMATS.md, "Export".
//
//   kldq int4/int3/int2 _gG (sym or _asym)  ->  pack-quantized, strategy group, group_size G
//   kldq int8 (per row)                      ->  pack-quantized, 8 bits, strategy channel
//   kldq fp8_e4m3 (per row / _tensor)        ->  naive-quantized float 8 bits, channel / tensor
//   kldq bf16, fp16 (and dense layers)       ->  `.weight` as stored, named in `ignore`
//
// pack-quantized codes: each row is one little-endian bit stream, element j at bits [j·b, j·b+b)
// with the value q + 2^(b-1) (compressed-tensors' signed q plus its offset), padded with zero bits
// to a whole int32:
//   int32 word k of a row (b = 4) = [c(8k+7) | ... | c(8k+1) | c(8k)]   (c(8k) in bits 0-3)
// which is kldq's LSB-first row of stored codes (code = q + 2^(b-1)) byte for byte on a
// little-endian host: the export reinterprets kldq's bytes. Zero points (asymmetric) are packed
// the same way along the output dimension (column g of weight_zero_point is the bit stream of
// the rows' zero codes in group g).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <functional>
#include <map>

#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/export/export.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::exporting {
namespace {

namespace fs = std::filesystem;
using formats::Format;
using formats::FormatSpec;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

static_assert(std::endian::native == std::endian::little,
              "pack-quantized export reinterprets little-endian bytes as int32");

}  // namespace

std::string compressed_tensors_unsupported(const FormatSpec& spec, int64_t in) {
  switch (spec.format) {
    case Format::BF16:
    case Format::FP16:
    case Format::INT8:
      return "";
    case Format::FP8_E4M3:
      return "";
    case Format::FP8_E5M2:
    case Format::FP8_E4M3_NOSCALE:
      return "no fp8 e5m2 or unscaled fp8 weights in compressed-tensors (nearest: fp8_e4m3)";
    case Format::NF4:
    case Format::FP4:
      return fmt::format("no {} in compressed-tensors (nearest: int4_g{})", spec.traits().name,
                         spec.group <= 32   ? 32
                         : spec.group <= 64 ? 64
                                            : 128);
    case Format::INT4:
    case Format::INT3:
    case Format::INT2:
      if (spec.float_zero)
        return "float zero points (_fz) are not in compressed-tensors (nearest: _asym)";
      if (in > 0 && in % spec.group != 0)
        return fmt::format(
            "{} input columns are not whole groups of {} (compressed-tensors needs them; "
            "nearest: int8 or a group that divides {})",
            in, spec.group, in);
      return "";
  }
  return "unknown format";
}

namespace {

// The `weights` quantization arguments and the compressor format of a quantized layer.
std::pair<nlohmann::json, std::string> scheme(const FormatSpec& spec) {
  nlohmann::json w = {{"num_bits", spec.traits().code_bits},
                      {"type", "int"},
                      {"symmetric", !spec.asymmetric},
                      {"dynamic", false},
                      {"observer", "minmax"},
                      {"actorder", nullptr},
                      {"block_structure", nullptr},
                      {"group_size", nullptr},
                      {"strategy", "channel"}};
  if (spec.format == Format::FP8_E4M3) {
    w["type"] = "float";
    w["strategy"] = spec.per_tensor ? "tensor" : "channel";
    return {w, "naive-quantized"};
  }
  if (spec.format != Format::INT8) {
    w["strategy"] = "group";
    w["group_size"] = spec.group;
  }
  return {w, "pack-quantized"};
}

// uint8 [r, n] -> int32 [r, ceil(n/4)], the bytes of each row zero-padded to whole words.
at::Tensor as_words(const at::Tensor& bytes) {
  const int64_t n = bytes.size(1), words = (n + 3) / 4;
  at::Tensor padded = at::zeros({bytes.size(0), words * 4}, at::kByte);
  padded.narrow(1, 0, n).copy_(bytes);
  return padded.view(at::kInt);
}

// The compressed-tensors tensors of one quantized layer (docs/FORMATS.md, "Export").
Named layer_tensors(const std::string& l, const formats::PackedWeight& p) {
  const FormatSpec& s = p.spec;
  const at::Tensor shape = at::tensor({p.out, p.in}, at::kLong);
  if (s.format == Format::FP8_E4M3)
    return {{l + ".weight", p.codes},
            {l + ".weight_scale", s.per_tensor ? p.scales : p.scales.reshape({p.out, 1})}};
  if (s.format == Format::INT8) {
    // signed q in [-128, 127] -> stored q + 128
    const at::Tensor u = (p.codes.to(at::kShort) + 128).to(at::kByte);
    return {{l + ".weight_packed", as_words(u)},
            {l + ".weight_scale", p.scales.reshape({p.out, 1})},
            {l + ".weight_shape", shape}};
  }
  Named t = {{l + ".weight_packed", as_words(p.codes)},
             {l + ".weight_scale", p.scales},
             {l + ".weight_shape", shape}};
  if (s.asymmetric) {  // [out, groups] codes -> bit streams along out: [ceil(out·b/32), groups]
    const at::Tensor streams = formats::pack_bits(p.zeros.t().contiguous(), s.traits().code_bits);
    t.push_back({l + ".weight_zero_point", as_words(streams).t().contiguous()});
  }
  return t;
}

// Layers of one block whose scheme must agree because vLLM fuses them into one module.
struct FusedGroup {
  const char* fused;       // vLLM's module, relative to the block
  const char* fused_leaf;  // its last name component
  std::vector<model::Proj> members;
};
const FusedGroup kFusedGroups[] = {
    {"self_attn.qkv_proj", "qkv_proj", {model::Proj::Q, model::Proj::K, model::Proj::V}},
    {"mlp.gate_up_proj", "gate_up_proj", {model::Proj::GATE, model::Proj::UP}}};

// `re:` regex naming modules `parent.<leaf>` exactly (compressed-tensors and vLLM match targets
// with re.match; the anchors keep layers.1 from matching layers.10).
std::string exact_target(const std::string& parent, const std::string& leaf) {
  std::string re = "re:^";
  for (char c : parent) re += c == '.' ? std::string("\\.") : std::string(1, c);
  return re + "\\." + leaf + "$";
}

nlohmann::json quantization_config(const Source& src) {
  std::map<std::string, nlohmann::json> groups;  // scheme text -> config group
  nlohmann::json ignore = nlohmann::json::array({"lm_head"});
  for (int b = 0; b < src.config().num_layers; ++b)
    for (model::Proj p : model::kAllProjs) {
      const std::string name = model::LayerId{b, p}.name();
      const auto f = src.formats().find(name);
      if (f == src.formats().end() || f->second.dense()) {
        ignore.push_back(name);
        continue;
      }
      const auto [weights, format] = scheme(f->second);
      nlohmann::json& g = groups[weights.dump() + format];
      if (g.is_null())
        g = {{"targets", nlohmann::json::array()},
             {"weights", weights},
             {"input_activations", nullptr},
             {"output_activations", nullptr},
             {"format", format}};
      // The first member of a fused group also names vLLM's fused module (the group shares one
      // scheme, checked above): `(q_proj|qkv_proj)` matches in transformers and in vLLM alike.
      const size_t dot = name.rfind('.');
      std::string leaf = name.substr(dot + 1);
      for (const FusedGroup& fg : kFusedGroups)
        if (p == fg.members[0]) leaf = fmt::format("({}|{})", leaf, fg.fused_leaf);
      const std::string target = exact_target(name.substr(0, dot), leaf);
      g["targets"].push_back(target);
    }
  nlohmann::json config_groups = nlohmann::json::object();
  for (auto& [_, g] : groups) config_groups[fmt::format("group_{}", config_groups.size())] = g;
  return {{"quant_method", "compressed-tensors"},
          {"format", "mixed-precision"},
          {"quantization_status", "compressed"},
          {"config_groups", config_groups},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr},
          {"sparsity_config", nlohmann::json::object()},
          {"global_compression_ratio", nullptr}};
}

}  // namespace

void check_exportable(Target target, const model::ModelConfig& config,
                      const model::LayerFormats& formats, const std::string& what) {
  std::vector<std::string> problems;
  auto format_of = [&](const std::string& layer) {  // every dense format is one scheme: ignored
    const auto f = formats.find(layer);
    return f == formats.end() || f->second.dense() ? std::string("dense") : f->second.name();
  };
  if (target == Target::COMPRESSED_TENSORS) {
    if (std::none_of(formats.begin(), formats.end(),
                     [](const auto& f) { return !f.second.dense(); }))
      problems.push_back(
          "no layer is quantized: transformers and vLLM load this model as it is, without a "
          "compressed-tensors quantization_config");
    for (const auto& [layer, spec] : formats) {
      const auto id = model::LayerId::parse(layer);
      const std::string why =
          compressed_tensors_unsupported(spec, model::linear_shape(config, id->proj)[1]);
      if (!why.empty()) problems.push_back(fmt::format("{} ({}): {}", layer, spec.name(), why));
    }
    for (int b = 0; b < config.num_layers; ++b)
      for (const FusedGroup& g : kFusedGroups) {
        const std::string first = format_of(model::LayerId{b, g.members[0]}.name());
        std::string list;
        bool split = false;
        for (model::Proj p : g.members) {
          const std::string name = model::LayerId{b, p}.name(), f = format_of(name);
          split = split || f != first;
          list += fmt::format("{}{} {}", list.empty() ? "" : ", ", name, f);
        }
        if (split)
          problems.push_back(
              fmt::format("{}: vLLM fuses these into {} and needs one scheme for them (kldq plan "
                          "--fused-groups plans them together)",
                          list, g.fused));
      }
  }
  if (problems.empty()) return;
  std::string msg = fmt::format("{}: cannot export to {}:", what, target_name(target));
  for (const auto& p : problems) msg += "\n  " + p;
  throw ConfigError(msg);
}

ExportReport export_compressed_tensors(const Source& src, const fs::path& out_arg,
                                       const ExportOptions& options) {
  const fs::path out = directory_output(out_arg, "-o", options.force, {src.dir()});
  check_exportable(Target::COMPRESSED_TENSORS, src.config(), src.formats(), src.dir().string());
  // In checkpoint order: a quantized layer's tensors at its first stored part (weight_packed),
  // every other tensor as stored. Made twice (specs, then data): cheap views and small copies.
  std::vector<std::pair<std::string, std::function<Named()>>> order;
  for (const auto& s : src.slots()) {
    const bool quantized = s.layer && src.formats().count(s.layer->name()) &&
                           !src.formats().at(s.layer->name()).dense();
    if (quantized && s.role == model::TensorRole::LINEAR_PART && s.name.ends_with(".weight_packed"))
      order.push_back(
          {s.name, [&src, l = s.layer->name()] { return layer_tensors(l, src.packed(l)); }});
    else if (!quantized || s.role == model::TensorRole::LINEAR_BIAS)
      order.push_back({s.name, [&src, n = s.name] { return Named{{n, src.tensor(n)}}; }});
  }
  std::vector<io::TensorSpec> specs;
  ExportReport report;
  for (const auto& [_, make] : order)
    for (const auto& [name, t] : make()) {
      specs.push_back({name, t.scalar_type(), t.sizes().vec()});
      report.bytes += t.nbytes();
    }
  TempOutput tmp(out, TempOutput::Kind::DIRECTORY);
  {
    io::SafetensorsWriter writer(tmp.path() / "model.safetensors", specs, {{"format", "pt"}});
    for (const auto& [_, make] : order)
      for (const auto& [name, t] : make()) writer.write(name, t.contiguous());
    writer.commit();
  }
  nlohmann::json config = io::read_json_file(src.dir() / "config.json", true);
  config["quantization_config"] = quantization_config(src);
  io::write_file_atomic(tmp.path() / "config.json", config.dump(2) + "\n");
  for (const auto& entry : fs::directory_iterator(src.dir()))
    if (quant::companion_file(entry.path()) && entry.path().filename() != "config.json")
      fs::copy_file(entry.path(), tmp.path() / entry.path().filename());
  if (fs::exists(src.dir() / model::kPlanFile))  // provenance, under a name no reader takes
    fs::copy_file(src.dir() / model::kPlanFile, tmp.path() / "kldq_plan.json");
  tmp.commit();
  for (const auto& [layer, spec] : src.formats())
    if (!spec.dense()) ++report.exact_layers;
  report.folded = src.folded();
  return report;
}

}  // namespace kldq::exporting
