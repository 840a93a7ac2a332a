// The method registry (RTN so far) and plan application: in memory on a decoder, and streamed
// from one checkpoint to a quantized one.
#include "kldq/quant/quantizer.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/log.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/model/weight_store.hpp"

namespace kldq::quant {
namespace {

namespace fs = std::filesystem;

class RtnQuantizer final : public Quantizer {
 public:
  std::string name() const override { return "rtn"; }
  formats::PackedWeight quantize(const model::LayerId&, const at::Tensor& w,
                                 const formats::FormatSpec& spec) override {
    return formats::quantize_rtn(w, spec);
  }
};

// Files of a checkpoint directory that are not weights: copied into quantized checkpoints.
bool copied_file(const fs::path& p) {
  const std::string name = p.filename().string(), ext = p.extension().string();
  return fs::is_regular_file(p) && ext != ".safetensors" && ext != ".bin" && ext != ".pt" &&
         ext != ".pth" && name != "model.safetensors.index.json" && name != model::kPlanFile &&
         !name.starts_with(".");
}

}  // namespace

std::unique_ptr<Quantizer> make_quantizer(std::string_view method) {
  if (method == "rtn") return std::make_unique<RtnQuantizer>();
  if (method == "gptq" || method == "awq")
    throw UnsupportedError(fmt::format("--method {}: not built yet (rtn is available)", method));
  throw ConfigError(fmt::format("--method: unknown method '{}' (one of: rtn, gptq, awq)", method));
}

void quantize_decoder(model::Decoder& decoder, const model::LayerFormats& formats,
                      Quantizer& quantizer) {
  for (const auto& id : decoder.linear_ids()) {
    const auto f = formats.find(id.name());
    if (f == formats.end()) continue;
    const at::Tensor w = decoder.linear(id).effective_weight(at::kFloat);  // [out, in] fp32
    decoder.quantize_layer(id, quantizer.quantize(id, w, f->second));
  }
}

void write_quantized_checkpoint(const fs::path& src, const fs::path& out_arg, const Plan& plan,
                                Quantizer& quantizer, const WriteOptions& options) {
  const fs::path out = io::checkpoint_output(out_arg, options.force);
  const model::ModelConfig config = model::load_config(src / "config.json");
  const io::Checkpoint ck = io::Checkpoint::open(src);
  // The source must load as a plain checkpoint (header checks only, nothing is read yet).
  if (!model::read_layer_formats(ck, config).empty())
    throw ConfigError(
        fmt::format("{}: already a quantized checkpoint; quantize the original", src.string()));
  model::WeightStore ws(ck, c10::kCPU, c10::kFloat);
  ws.validate(model::expected_tensors(config));

  std::vector<model::LayerId> ids;
  for (int b = 0; b < config.num_layers; ++b)
    for (model::Proj p : model::kAllProjs) ids.push_back({b, p});
  std::vector<std::string> unmatched;
  const model::LayerFormats formats = plan.resolve(ids, &unmatched);
  for (const auto& pattern : unmatched)
    log::warn("layer pattern '{}' matches no layer of {}", pattern, src.string());

  nlohmann::json layer_names = nlohmann::json::object();
  for (const auto& [layer, spec] : formats) layer_names[layer] = spec.name();
  const auto slots = model::expected_tensors(config, formats);
  std::vector<io::TensorSpec> specs;
  for (const auto& s : slots)
    specs.push_back({s.name, s.dtype ? *s.dtype : ck.info(s.name).scalar_type, s.shape});

  const fs::path tmp = temp_sibling(out);
  remove_tree(tmp);
  fs::create_directories(tmp);
  try {
    io::SafetensorsWriter writer(tmp / "model.safetensors", specs,
                                 {{"format", "pt"},
                                  {model::kFormatsKey, layer_names.dump()},
                                  {model::kVersionKey, KLDQ_VERSION_STRING}});
    // Slots list a layer's parts consecutively: quantize on its first part, write them in order.
    std::vector<at::Tensor> parts;
    size_t next_part = 0;
    for (const auto& s : slots) {
      if (s.role != model::TensorRole::LINEAR_WEIGHT && s.role != model::TensorRole::LINEAR_PART) {
        writer.write(s.name, ck.tensor(s.name));
        continue;
      }
      if (next_part == parts.size()) {
        const std::string layer = s.layer->name();
        parts =
            quantizer.quantize(*s.layer, ck.tensor(layer + ".weight"), formats.at(layer)).parts();
        next_part = 0;
      }
      writer.write(s.name, parts[next_part++].contiguous());
    }
    writer.commit();
    for (const auto& entry : fs::directory_iterator(src))
      if (copied_file(entry.path())) fs::copy_file(entry.path(), tmp / entry.path().filename());
    nlohmann::json plan_json = plan.to_json();
    plan_json["kldq_version"] = KLDQ_VERSION_STRING;
    plan_json["layers"] = layer_names;
    io::write_file_atomic(tmp / model::kPlanFile, plan_json.dump(2) + "\n");
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  rename_into_place(tmp, out);
}

}  // namespace kldq::quant
