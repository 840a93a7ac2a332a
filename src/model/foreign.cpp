// compressed-tensors checkpoints presented in kldq's layout (the inverse of
// src/export/compressed_tensors.cpp, which has the bit layouts):
//
//   pack-quantized int b in {2,3,4}, group G in {32,64,128}  ->  int<b>_g<G>[_asym]
//   pack-quantized int 8, channel, symmetric                 ->  int8
//   naive-/float-quantized float 8 (e4m3), channel / tensor   ->  fp8_e4m3[_tensor]
//   ignored or untargeted layers                             ->  bf16 / fp16 (as stored), or a
//                                                                plain `.weight` of another dtype
//
// weight_packed int32 rows are kldq's LSB-first code rows (bytes reinterpreted, padding dropped;
// 8-bit values q + 128 become int8 q); weight_scale becomes fp16 (refused unless exact);
// weight_zero_point's bit streams along the output dimension become kldq's uint8 [out, groups].
#include "kldq/model/foreign.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/formats/packed.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/regex.hpp"
#include "kldq/io/tokenizer/unicode.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"
#include "kldq/model/quantized.hpp"

namespace kldq::model {
namespace {

namespace fs = std::filesystem;
using formats::Format;
using formats::FormatSpec;
using Derived = io::Checkpoint::Derived;

// The top-level alternatives of a regex (split at `|` outside groups, classes and escapes).
std::vector<std::string> alternatives(const std::string& re) {
  std::vector<std::string> out(1);
  int depth = 0;
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char c = re[i];
    if (c == '\\' && i + 1 < re.size()) {
      out.back() += re.substr(i++, 2);
      continue;
    }
    if (in_class)
      in_class = c != ']';
    else if (c == '[')
      in_class = true;
    else if (c == '(')
      ++depth;
    else if (c == ')')
      --depth;
    else if (c == '|' && depth == 0) {
      out.emplace_back();
      continue;
    }
    out.back() += c;
  }
  return out;
}

// A compressed-tensors target or ignore entry: "re:REGEX" (Python's re.match: anchored at the
// start; `$` ends an alternative), a module name, or the class name "Linear" (every linear
// layer). kldq's matcher has no anchors: each top-level alternative loses its `^` and `$`, and
// one without `$` may continue (`.*`); the whole must then match the module name.
class Target {
 public:
  Target(const std::string& text, const std::string& where) : text_(text), where_(where) {
    if (!text.starts_with("re:")) return;
    std::string re;
    for (std::string alt : alternatives(text.substr(3))) {
      if (alt.starts_with("^")) alt.erase(0, 1);
      const bool anchored = alt.ends_with("$") && !alt.ends_with("\\$");
      if (anchored) alt.pop_back();
      re += (re.empty() ? "" : "|") + ("(?:" + alt + ")" + (anchored ? "" : ".*"));
    }
    try {
      regex_ = std::make_shared<io::Regex>(io::Regex::compile(re));
    } catch (const Error& e) {
      throw ConfigError(fmt::format("{}: target '{}': {}", where, text, e.what()));
    }
  }
  bool matches(const std::string& module) const {
    if (!regex_) return text_ == "Linear" || text_ == module;
    try {
      return regex_->full_match(io::unicode::decode_utf8(module));
    } catch (const Error& e) {  // a pattern past the matcher's bounds
      throw ConfigError(fmt::format("{}: target '{}': {}", where_, text_, e.what()));
    }
  }

 private:
  std::string text_, where_;
  std::shared_ptr<io::Regex> regex_;
};

// A string member, or `fallback` when absent or null (compressed-tensors writes nulls freely).
std::string text(const io::Doc& d, const char* key, const std::string& fallback) {
  return d.str_or(key, fallback);
}

std::vector<Target> targets(const io::Doc& list) {
  std::vector<Target> out;
  if (list.is_null()) return out;
  for (size_t i = 0; i < list.size(); ++i) {
    const io::Doc t = list[i];
    out.emplace_back(t.str(), t.where());
  }
  return out;
}

// kldq's format of one config group's weights; ConfigError naming the group for the rest.
FormatSpec group_format(const io::Doc& gd, const std::string& top_format) {
  for (const char* key : {"input_activations", "output_activations"})
    if (gd.has(key))
      gd[key].fail(
          "activation quantization is not supported (kldq evaluates weight-only quantization)");
  const io::Doc wd = gd["weights"];
  wd.require_object();
  const nlohmann::json& w = wd.json();
  const std::string format = text(gd, "format", top_format), type = text(wd, "type", "int"),
                    strategy = text(wd, "strategy", "");
  const int bits = static_cast<int>(wd["num_bits"].integer(1, 32));
  if (w.contains("symmetric") && !w["symmetric"].is_boolean() && !w["symmetric"].is_null())
    wd["symmetric"].fail("expected true or false");
  const bool sym = !w.contains("symmetric") || w["symmetric"] != false;
  if (w.contains("actorder") && !w["actorder"].is_null() && !w["actorder"].is_string() &&
      !w["actorder"].is_boolean())
    wd["actorder"].fail("expected a string, a boolean or null");
  if (w.contains("dynamic") && !w["dynamic"].is_null() && w["dynamic"] != false)
    wd["dynamic"].fail("dynamic weight scales are not supported");
  if (w.contains("actorder") && w["actorder"] == "group")
    wd["actorder"].fail("\"group\" (g_idx) is not supported");
  auto refuse = [&] {
    return ConfigError(fmt::format(
        "{}: {} {}-bit {} {} weights in format '{}' have no exact kldq format (kldq reads "
        "pack-quantized int2/3/4 groups of 32/64/128, pack-quantized int8 per channel, fp8 e4m3 "
        "per channel or tensor)",
        wd.where(), sym ? "symmetric" : "asymmetric", bits, io::shown_text(type),
        io::shown_text(strategy), io::shown_text(format)));
  };
  if (type == "float") {
    if (bits != 8 || !sym || (format != "naive-quantized" && format != "float-quantized") ||
        (strategy != "channel" && strategy != "tensor"))
      throw refuse();
    return FormatSpec::parse(strategy == "tensor" ? "fp8_e4m3_tensor" : "fp8_e4m3");
  }
  if (type != "int" || format != "pack-quantized") throw refuse();
  if (bits == 8 && strategy == "channel" && sym) return FormatSpec::parse("int8");
  const nlohmann::json gs = w.contains("group_size") ? w["group_size"] : nlohmann::json();
  if (!gs.is_null() &&
      (!gs.is_number_integer() || gs.get<int64_t>() < 1 || gs.get<int64_t>() > (int64_t{1} << 30)))
    wd["group_size"].fail("expected a positive integer or null");
  const int group = gs.is_null() ? 0 : gs.get<int>();
  if (bits < 2 || bits > 4 || strategy != "group" || (group != 32 && group != 64 && group != 128))
    throw refuse();
  return FormatSpec::parse(fmt::format("int{}_g{}{}", bits, group, sym ? "" : "_asym"));
}

// A float tensor as fp16, refused unless every value survives the conversion.
at::Tensor exact_half(const at::Tensor& t, const std::string& what) {
  const at::Tensor h = t.to(at::kHalf);
  if (!at::equal(h.to(at::kFloat), t.to(at::kFloat)))
    throw IoError(
        fmt::format("{}: scales that fp16 cannot hold exactly (kldq's int formats store "
                    "fp16 scales)",
                    what));
  return h;
}

io::TensorInfo info(const std::string& name, at::ScalarType dtype, std::vector<int64_t> shape) {
  io::TensorInfo i;
  i.name = name;
  i.dtype = io::safetensors_dtype_name(dtype);
  i.scalar_type = dtype;
  i.shape = std::move(shape);
  i.end = static_cast<uint64_t>(i.numel()) * at::elementSize(dtype);  // bytes as kldq holds them
  return i;
}

// The stored tensor `name`, checked to be `dtype` [shape].
at::Tensor stored(const io::Checkpoint& ck, const std::string& name, at::ScalarType dtype,
                  const std::vector<int64_t>& shape) {
  const io::TensorInfo& i = ck.info(name);
  if ((dtype != at::kFloat && i.scalar_type != dtype) || i.shape != shape)
    throw IoError(fmt::format("{}: tensor '{}' is {} {}, expected {} [{}]", ck.dir().string(), name,
                              i.dtype, fmt::join(i.shape, ", "), io::safetensors_dtype_name(dtype),
                              fmt::join(shape, ", ")));
  const at::Tensor t = ck.tensor(name);
  if (dtype == at::kFloat && !at::isFloatingType(t.scalar_type()))
    throw IoError(fmt::format("{}: tensor '{}' is not floating point", ck.dir().string(), name));
  return t;
}

// fp8 e4m3 layer `l` [out, in]: the stored float8 weight as kldq's codes, its weight_scale as
// fp32 [1] (per tensor) or [out] (per channel).
void translate_fp8(const io::Checkpoint& ck, const std::string& l, const std::string& where,
                   const FormatSpec& s, int64_t out, int64_t in, std::map<std::string, Derived>& d,
                   std::set<std::string>& hidden) {
  const at::Tensor w = stored(ck, l + ".weight", at::kFloat8_e4m3fn, {out, in});
  const int64_t n = s.per_tensor ? 1 : out;
  const at::Tensor scale = ck.tensor(l + ".weight_scale");
  const std::vector<int64_t> shape = scale.sizes().vec();
  const bool shaped =
      s.per_tensor ? scale.numel() == 1 && scale.dim() <= 1
                   : shape == std::vector<int64_t>{out, 1} || shape == std::vector<int64_t>{out};
  if (!shaped || !at::isFloatingType(scale.scalar_type()))
    throw IoError(fmt::format("{}: weight_scale must be a float [{}]", where,
                              s.per_tensor ? "1" : fmt::format("{}, 1", out)));
  hidden.insert(l + ".weight");
  d[l + ".weight_packed"] = {info(l + ".weight_packed", at::kFloat8_e4m3fn, {out, in}),
                             [w] { return w; }};
  d[l + ".weight_scale"] = {info(l + ".weight_scale", at::kFloat, {n}),
                            [scale, n] { return scale.to(at::kFloat).reshape({n}); }};
}

// Integer layer `l` [out, in]: the int32 weight_packed rows as kldq's code rows (int8: stored
// q + 128 -> q), weight_scale as exact fp16, and the asymmetric formats' zero points unpacked.
void translate_int(const io::Checkpoint& ck, const std::string& l, const std::string& where,
                   const FormatSpec& s, int64_t out, int64_t in, std::map<std::string, Derived>& d,
                   std::set<std::string>& hidden) {
  const int b = s.traits().code_bits;
  const int64_t words = (in * b + 31) / 32, groups = s.format == Format::INT8 ? 1 : in / s.group;
  if (s.format != Format::INT8 && in % s.group != 0)
    throw IoError(fmt::format("{}: {} columns are not whole groups of {}", where, in, s.group));
  const at::Tensor shape = ck.tensor(l + ".weight_shape");
  if (shape.numel() != 2 || shape.to(at::kLong)[0].item<int64_t>() != out ||
      shape.to(at::kLong)[1].item<int64_t>() != in)
    throw IoError(fmt::format("{}: weight_shape is not [{}, {}]", where, out, in));
  const at::Tensor packed = stored(ck, l + ".weight_packed", at::kInt, {out, words});
  const at::Tensor scale = stored(ck, l + ".weight_scale", at::kFloat, {out, groups});
  hidden.insert(l + ".weight_shape");
  if (s.format == Format::INT8) {  // stored q + 128 -> int8 q
    d[l + ".weight_packed"] = {info(l + ".weight_packed", at::kChar, {out, in}), [packed, in] {
                                 const at::Tensor u = packed.view(at::kByte).narrow(1, 0, in);
                                 return (u.to(at::kShort) - 128).to(at::kChar).contiguous();
                               }};
    d[l + ".weight_scale"] = {info(l + ".weight_scale", at::kHalf, {out}),
                              [scale, where] { return exact_half(scale, where).reshape({-1}); }};
    return;
  }
  const int64_t bytes = (in * b + 7) / 8;
  d[l + ".weight_packed"] = {info(l + ".weight_packed", at::kByte, {out, bytes}), [packed, bytes] {
                               return packed.view(at::kByte).narrow(1, 0, bytes).contiguous();
                             }};
  d[l + ".weight_scale"] = {info(l + ".weight_scale", at::kHalf, {out, groups}),
                            [scale, where] { return exact_half(scale, where); }};
  if (!s.asymmetric) return;
  const at::Tensor zp =
      stored(ck, l + ".weight_zero_point", at::kInt, {(out * b + 31) / 32, groups});
  hidden.insert(l + ".weight_zero_point");
  d[l + ".weight_zero"] = {info(l + ".weight_zero", at::kByte, {out, groups}), [zp, b, out] {
                             const at::Tensor streams = zp.t().contiguous().view(at::kByte);
                             return formats::unpack_bits(streams.narrow(1, 0, (out * b + 7) / 8), b,
                                                         out)
                                 .t()
                                 .contiguous();
                           }};
}

// Adds the kldq tensors of quantized layer `l` [out, in] to `d` and the stored ones it replaces
// to `hidden`.
void translate(const io::Checkpoint& ck, const std::string& l, const FormatSpec& s, int64_t out,
               int64_t in, std::map<std::string, Derived>& d, std::set<std::string>& hidden) {
  const std::string where = fmt::format("{}: layer '{}'", ck.dir().string(), l);
  if (ck.contains(l + ".weight_g_idx"))
    throw IoError(fmt::format("{}: act-order indices (weight_g_idx) are not supported", where));
  if (s.format == Format::FP8_E4M3)
    translate_fp8(ck, l, where, s, out, in, d, hidden);
  else
    translate_int(ck, l, where, s, out, in, d, hidden);
}

// ConfigError for a quantization_config kldq does not read: another quant_method, a status
// other than compressed, sparsity, transforms or a kv-cache scheme.
void check_scheme(const io::Doc& qd) {
  const std::string method = text(qd, "quant_method", "");
  if (method != "compressed-tensors")
    qd.fail(fmt::format("quant_method '{}': kldq reads compressed-tensors checkpoints and its own",
                        io::shown_text(method)));
  const std::string status = text(qd, "quantization_status", "compressed");
  if (status != "compressed")
    qd["quantization_status"].fail(
        fmt::format("'{}', expected 'compressed'", io::shown_text(status)));
  for (const char* key : {"sparsity_config", "transform_config", "kv_cache_scheme"})
    if (qd.has(key) && !qd[key].json().empty())
      qd[key].fail("not supported (kldq reads weight-only quantization)");
}

// IoError for tensors of activation quantization or act-order.
void check_weight_only(const io::Checkpoint& ck, const fs::path& dir) {
  for (const auto& name : ck.names())
    if (name.ends_with(".input_scale") || name.ends_with(".input_global_scale") ||
        name.ends_with(".weight_g_idx"))
      throw IoError(
          fmt::format("{}: tensor '{}': activation scales and act-order indices are "
                      "not supported (kldq reads weight-only quantization)",
                      dir.string(), name));
}

// The config groups' targets and formats: groups by name (an object, as compressed-tensors
// writes them), or a list of groups; null means none (every layer dense).
using Groups = std::vector<std::pair<std::vector<Target>, FormatSpec>>;
Groups config_groups(const io::Doc& qd, const std::string& top) {
  Groups groups;
  const io::Doc cg = qd["config_groups"];
  if (cg.json().is_array()) {
    for (size_t i = 0; i < cg.size(); ++i)
      groups.push_back({targets(cg[i]["targets"]), group_format(cg[i], top)});
  } else if (!cg.is_null()) {
    cg.require_object();
    for (const auto& [name, g] : cg.json().items())
      groups.push_back({targets(cg[name]["targets"]), group_format(cg[name], top)});
  }
  return groups;
}

// The format of the groups targeting layer `name`, or null when none does; ConfigError when
// groups of different formats do.
const FormatSpec* layer_spec(const Groups& groups, const std::string& name,
                             const std::string& where) {
  const FormatSpec* spec = nullptr;
  for (const auto& [ts, s] : groups)
    if (std::any_of(ts.begin(), ts.end(), [&](const Target& t) { return t.matches(name); })) {
      if (spec && spec->name() != s.name())
        throw ConfigError(fmt::format("{}: layer '{}' is targeted by groups of formats {} and {}",
                                      where, name, spec->name(), s.name()));
      spec = &s;
    }
  return spec;
}

}  // namespace

io::Checkpoint open_checkpoint(const fs::path& dir) {
  io::Checkpoint ck = io::Checkpoint::open(dir);
  const nlohmann::json j = io::read_json_file(dir / "config.json", true);
  if (!j.is_object() || !j.contains("quantization_config")) return ck;
  const io::Doc qd =
      io::Doc(j, (dir / "config.json").string(), io::DocKind::CONFIG)["quantization_config"];
  qd.require_object();
  const std::string where = qd.where();
  check_scheme(qd);
  const ModelConfig config = parse_config(j, (dir / "config.json").string());
  const Groups groups = config_groups(qd, text(qd, "format", ""));
  const std::vector<Target> ignore =
      qd.has("ignore") ? targets(qd["ignore"]) : std::vector<Target>{};
  check_weight_only(ck, dir);
  std::map<std::string, Derived> derived;
  std::set<std::string> hidden;
  nlohmann::json layer_formats = nlohmann::json::object();
  for (int b = 0; b < config.num_layers; ++b)
    for (Proj p : kAllProjs) {
      const std::string name = LayerId{b, p}.name();
      const bool ignored = std::any_of(ignore.begin(), ignore.end(),
                                       [&](const Target& t) { return t.matches(name); });
      const FormatSpec* spec = ignored ? nullptr : layer_spec(groups, name, where);
      if (!spec) {
        // Unquantized layers stored in bf16/fp16 are held as kldq's restored layers are (in
        // their own precision, whatever the compute dtype), so memory and bits per weight
        // compare.
        const auto dt = ck.contains(name + ".weight") ? ck.info(name + ".weight").scalar_type
                                                      : at::ScalarType::Undefined;
        if (dt == at::kBFloat16 || dt == at::kHalf)
          layer_formats[name] = dt == at::kBFloat16 ? "bf16" : "fp16";
        continue;
      }
      const std::vector<int64_t> shape = linear_shape(config, p);
      translate(ck, name, *spec, shape[0], shape[1], derived, hidden);
      layer_formats[name] = spec->name();
    }
  ck.overlay(std::move(derived), hidden, {{kFormatsKey, layer_formats.dump()}});
  return ck;
}

}  // namespace kldq::model
