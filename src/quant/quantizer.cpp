// The method registry, RTN, and applying quantized layers: in memory on a decoder, and written
// as a quantized checkpoint (streamed for RTN, from the quantized decoder for calibrated methods).
#include "kldq/quant/quantizer.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/model/foreign.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/model/weight_store.hpp"
#include "sequential.hpp"

namespace kldq::quant {
namespace {

namespace fs = std::filesystem;

}  // namespace

bool companion_file(const fs::path& p) {
  const std::string name = p.filename().string(), ext = p.extension().string();
  return fs::is_regular_file(p) && ext != ".safetensors" && ext != ".bin" && ext != ".pt" &&
         ext != ".pth" && name != "model.safetensors.index.json" && name != model::kPlanFile &&
         name != "SHA256SUMS" && !name.starts_with(".");  // the source's checksums are not ours
}

model::MemoryNeeds memory_needs(model::MemoryNeeds n, const model::ModelConfig& c,
                                const model::LayerFormats& formats, const MethodOptions& o,
                                int64_t N, int64_t T, c10::ScalarType dtype) {
  const uint64_t H = static_cast<uint64_t>(c.hidden_size),
                 I = static_cast<uint64_t>(c.intermediate_size), e = c10::elementSize(dtype);
  for (const auto& [name, spec] : formats) {
    const auto id = model::LayerId::parse(name);
    if (!id || id->block >= static_cast<int>(n.blocks.size())) continue;
    const auto shape = model::linear_shape(c, id->proj);
    n.blocks[static_cast<size_t>(id->block)] += spec.bytes(shape[0], shape[1]);
  }
  const uint64_t tokens = static_cast<uint64_t>(N * T);
  n.working = tokens * H * e +                              // calibration hidden states
              model::forward_bytes(c, o.batch, T, dtype) +  // one block's forward
              3 * I * I * 4 +                               // Hessian, its inverse (fp32)
              4 * 2 * I * H * 4 +                           // a stacked GPTQ problem
              // AWQ's captured layer inputs (q, o, gate, down), briefly twice while joined.
              (o.method == Method::AWQ ? 2 * tokens * (2 * H + uint64_t(c.q_dim()) + I) * e : 0) +
              (512ULL << 20);
  return n;
}

void check_formats(Method method, const model::LayerFormats& formats) {
  for (const auto& [layer, spec] : formats) {
    const bool dense = spec.dense();
    const bool int_grouped = spec.traits().blocking == formats::Blocking::GROUP;
    const bool fits_zeros = method_traits(method).float_zeros;
    if (fits_zeros && !dense && !spec.float_zero) {
      formats::FormatSpec fz = spec;
      fz.asymmetric = fz.float_zero = true;
      throw ConfigError(fmt::format(
          "layer {}: --method hqq fits float zero points, which {} cannot hold; use {}", layer,
          spec.name(), int_grouped ? fz.name() : "an int2/3/4 _fz format (e.g. int4_g64_fz)"));
    }
    if (!fits_zeros && spec.float_zero)
      throw ConfigError(
          fmt::format("layer {}: format {} holds HQQ's fitted zero points; use "
                      "--method hqq (or the _asym format with --method {})",
                      layer, spec.name(), method_name(method)));
  }
}

std::string method_format(Method method, const std::string& format) {
  formats::FormatSpec spec = formats::FormatSpec::parse(format);
  if (method_traits(method).float_zeros && spec.traits().blocking == formats::Blocking::GROUP)
    spec.asymmetric = spec.float_zero = true;
  return spec.name();
}

formats::PackedWeight quantize_weight(const at::Tensor& w, const formats::FormatSpec& spec,
                                      const MethodOptions& o, const std::string& what) {
  if (o.method == Method::HQQ && spec.float_zero) return quantize_hqq(w, spec, o.hqq, what);
  return formats::quantize_rtn(w, spec);
}

QuantizedLayers quantize_layers(model::Decoder& m, const model::LayerFormats& formats,
                                const MethodOptions& o, const at::Tensor& calib) {
  check_formats(o.method, formats);
  for (const auto& id : m.linear_ids())
    if (formats.count(id.name()) && m.linear(id).is_packed())
      throw ConfigError(fmt::format("layer {} is already quantized ({}); quantize the original",
                                    id.name(), m.linear(id).format_name()));
  if (needs_calibration(o.method)) return quantize_calibrated(m, formats, o, calib);
  QuantizedLayers out;
  for (const auto& id : m.linear_ids()) {
    const auto f = formats.find(id.name());
    if (f == formats.end()) continue;
    // On the device whatever the block's residency; kept where the block's weights are.
    const formats::PackedWeight p =
        quantize_weight(m.linear(id).weight().to(m.device()), f->second, o, "layer " + id.name());
    out[id] = {p.map([&](const at::Tensor& t) { return m.to_storage(id.block, t); }), {}};
  }
  return out;
}

void apply_layers(model::Decoder& m, QuantizedLayers layers) {
  for (int b = 0; b < m.num_blocks(); ++b) {
    for (model::Proj p : model::kAllProjs) {
      const auto l = layers.find({b, p});
      if (l == layers.end()) continue;
      m.quantize_layer(l->first, l->second.packed, l->second.input_scale);
      layers.erase(l);  // the model holds the layer now; its old members go with the fusing
    }
    m.fuse_groups(b);
  }
}

nlohmann::json method_json(const MethodOptions& o,
                           const std::optional<calib::CalibrationIdentity>& calibration) {
  nlohmann::json j = {{"method", o.method}};
  if (o.method == Method::GPTQ)
    j["gptq"] = {{"damp", o.gptq.damp}, {"block", o.gptq.block}, {"act_order", o.gptq.act_order}};
  if (o.method == Method::AWQ)
    j["awq"] = {
        {"grid", o.awq.grid}, {"clip_steps", o.awq.clip_steps}, {"max_shrink", o.awq.max_shrink}};
  if (o.method == Method::HQQ)
    j["hqq"] = {{"lp_norm", o.hqq.lp_norm},
                {"beta", o.hqq.beta},
                {"iters", o.hqq.iters},
                {"round_zero", o.hqq.round_zero ? nlohmann::json(*o.hqq.round_zero) : nullptr}};
  if (calibration) j["calibration"] = calib::to_json(*calibration);
  return j;
}

RecordedMethod method_from_json(const nlohmann::json& j, const std::string& file) {
  return method_from_json(io::Doc(j, file, io::DocKind::CONFIG));
}

RecordedMethod method_from_json(const io::Doc& d) {
  d.keys({"method", "gptq", "awq", "hqq", "calibration"});
  RecordedMethod r;
  MethodOptions& o = r.options;
  const io::Doc method = d["method"];
  o.method = parse_method(method.str(), method.where());
  for (const Method m : {Method::GPTQ, Method::AWQ, Method::HQQ})
    if (d.contains(method_name(m)) && o.method != m)
      d[method_name(m)].fail(fmt::format("settings of {}, but the method is {}", method_name(m),
                                         method_name(o.method)));
  if (d.contains("gptq")) {
    const io::Doc g = d["gptq"];
    g.keys({"damp", "block", "act_order"});
    // The ranges the command line accepts (--damp) and the lazy batch a kernel can take.
    o.gptq.damp = g["damp"].number(0.0, 1e4);
    o.gptq.block = g["block"].integer(1, 1 << 16);
    o.gptq.act_order = g["act_order"].boolean();
  }
  if (d.contains("awq")) {
    const io::Doc a = d["awq"];
    a.keys({"grid", "clip_steps", "max_shrink"});
    o.awq.grid = static_cast<int>(a["grid"].integer(1, 1000));
    o.awq.clip_steps = static_cast<int>(a["clip_steps"].integer(1, 1000));
    o.awq.max_shrink = a["max_shrink"].number(0.0, 0.99);
  }
  if (d.contains("hqq")) {
    const io::Doc h = d["hqq"];
    h.keys({"lp_norm", "beta", "iters", "round_zero"});
    o.hqq.lp_norm = h["lp_norm"].number(0.1, 2.0);
    o.hqq.beta = h["beta"].number(1e-6, 1e6);
    o.hqq.iters = static_cast<int>(h["iters"].integer(0, 1000));
    if (!h["round_zero"].is_null()) o.hqq.round_zero = h["round_zero"].boolean();
  }
  if (d.contains("calibration")) r.calibration = calib::calibration_from_json(d["calibration"]);
  return r;
}

namespace {

// What write_tensors writes: the source checkpoint's tensors in the layout `slots` gives for the
// layers' formats, calibrated layers from `layers`.
struct TensorSource {
  const fs::path& src;
  const io::Checkpoint& ck;
  const std::vector<model::TensorSlot>& slots;
  const nlohmann::json& layer_names;  // layer -> format name
  const QuantizedLayers& layers;      // calibrated methods' layers (empty for rtn and hqq)
  const model::LayerFormats& formats;
};

// Writes model.safetensors at `file`: every slot in order, a linear layer as its quantized parts
// (rtn, hqq and dense formats quantized here, on `device`, from the stored weight).
void write_tensors(const fs::path& file, const TensorSource& t, const MethodOptions& method,
                   c10::Device device) {
  std::vector<io::TensorSpec> specs;
  for (const auto& s : t.slots)
    specs.push_back({s.name, s.dtype ? *s.dtype : t.ck.info(s.name).scalar_type, s.shape});
  // A source tensor as stored, refused when it holds NaN or Inf (it would quantize to NaN scales).
  auto stored = [&](const std::string& name) {
    at::Tensor x = t.ck.tensor(name);
    model::check_finite(x, fmt::format("{}: tensor '{}'", t.src.string(), name));
    return x;
  };
  io::SafetensorsWriter writer(file, specs,
                               {{"format", "pt"},
                                {model::kFormatsKey, t.layer_names.dump()},
                                {model::kVersionKey, KLDQ_VERSION_STRING}});
  // Slots list a layer's parts consecutively (its input scale last): a layer's tensors are
  // made on its first part and written in order.
  std::vector<at::Tensor> parts;
  size_t next_part = 0;
  for (const auto& s : t.slots) {
    if (s.role != model::TensorRole::LINEAR_WEIGHT && s.role != model::TensorRole::LINEAR_PART) {
      writer.write(s.name, stored(s.name));
      continue;
    }
    if (next_part == parts.size()) {
      const std::string layer = s.layer->name();
      const auto l = t.layers.find(*s.layer);
      // Dense formats (kept layers) come from the checkpoint, as RTN's do: the calibrated
      // decoder holds them in its compute dtype, which may round them differently.
      if (l == t.layers.end() || t.formats.at(layer).dense()) {
        const at::Tensor w = stored(layer + ".weight").to(device);
        parts =
            quantize_weight(w, t.formats.at(layer), method, "layer " + layer).to(c10::kCPU).parts();
      } else {
        parts = l->second.packed.to(c10::kCPU).parts();
        if (l->second.input_scale.defined())
          parts.push_back(l->second.input_scale.to(c10::kCPU, at::kBFloat16));
      }
      next_part = 0;
    }
    writer.write(s.name, parts[next_part++].contiguous());
  }
  writer.commit();
}

}  // namespace

void write_quantized_checkpoint(const fs::path& src, const fs::path& out_arg, const Plan& plan,
                                const MethodOptions& method, const CalibratedSource& calibrated,
                                const WriteOptions& options) {
  const fs::path out = directory_output(out_arg, "-o", options.force, {src});
  const model::ModelConfig config = model::load_config(src / "config.json");
  const io::Checkpoint ck = model::open_checkpoint(src);
  // The source must load as a plain checkpoint (header checks only, nothing is read yet).
  if (!model::read_layer_formats(ck, config).empty())
    throw ConfigError(
        fmt::format("{}: already a quantized checkpoint; quantize the original", src.string()));
  model::WeightStore ws(ck, c10::kCPU, c10::kFloat);
  ws.validate(model::expected_tensors(config));

  std::vector<std::string> unmatched;
  const model::LayerFormats formats = plan.resolve(model::linear_ids(config), &unmatched);
  for (const auto& pattern : unmatched)
    log::warn("layer pattern '{}' matches no layer of {}", pattern, src.string());
  check_formats(method.method, formats);
  // Calibrated methods quantize the whole model first; RTN quantizes each layer as it streams.
  QuantizedLayers layers;
  if (needs_calibration(method.method)) {
    check(calibrated.decoder != nullptr, "write_quantized_checkpoint: calibrated needs a decoder");
    layers = quantize_layers(*calibrated.decoder, formats, method, calibrated.calib);
  }
  std::set<std::string> scaled;
  for (const auto& [id, l] : layers)
    if (l.input_scale.defined()) scaled.insert(id.name());

  nlohmann::json layer_names = nlohmann::json::object();
  for (const auto& [layer, spec] : formats) layer_names[layer] = spec.name();
  const std::vector<model::TensorSlot> slots = model::expected_tensors(config, formats, scaled);

  TempOutput tmp_dir(out, TempOutput::Kind::DIRECTORY);
  const fs::path tmp = tmp_dir.path();
  {
    write_tensors(tmp / "model.safetensors", {src, ck, slots, layer_names, layers, formats}, method,
                  options.device);
    for (const auto& entry : fs::directory_iterator(src))
      if (companion_file(entry.path())) fs::copy_file(entry.path(), tmp / entry.path().filename());
    nlohmann::json plan_json = plan.to_json();
    plan_json["method"] = method.method;
    plan_json["method_settings"] = method_json(method, calibrated.identity);
    plan_json["kldq_version"] = KLDQ_VERSION_STRING;
    plan_json["layers"] = layer_names;
    io::write_file_atomic(tmp / model::kPlanFile, plan_json.dump(2) + "\n");
  }
  tmp_dir.commit();
}

}  // namespace kldq::quant
