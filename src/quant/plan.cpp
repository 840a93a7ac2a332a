// Layer selectors, plan resolution and the planner record, with errors that name the key path of
// the plan.
#include "kldq/quant/plan.hpp"

#include "kldq/quant/quantizer.hpp"

#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/io/document.hpp"

namespace kldq::quant {
namespace {

// Iterative glob match with backtracking to the last `*` (linear in practice for layer ids).
bool glob_match(std::string_view pattern, std::string_view text) {
  size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p, ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// A selector's regex in the matcher's syntax: the ECMAScript spellings selectors were written
// with before (`\d`, `\w` and their negations as ASCII classes, since ids are ASCII; `^` and `$`
// dropped, since a selector matches the whole id anyway).
std::string selector_regex(std::string re) {
  if (re.starts_with("^")) re.erase(0, 1);
  if (re.ends_with("$") && !re.ends_with("\\$")) re.pop_back();
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char c = re[i];
    if (c == '\\' && i + 1 < re.size()) {
      const char e = re[++i];
      const char* body = e == 'd' || e == 'D' ? "0-9" : e == 'w' || e == 'W' ? "A-Za-z0-9_" : "";
      const bool negated = e == 'D' || e == 'W';
      if (!*body || (in_class && negated))
        out += {c, e};  // anything else is the matcher's to accept or refuse
      else
        out += in_class ? std::string(body) : fmt::format("[{}{}]", negated ? "^" : "", body);
      continue;
    }
    if (c == '[' && !in_class)
      in_class = true;
    else if (c == ']' && in_class)
      in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

LayerSelector::LayerSelector(std::string pattern, const std::string& what)
    : pattern_(std::move(pattern)) {
  if (pattern_.empty() || pattern_ == "re:")
    throw ConfigError(fmt::format("{}: empty layer pattern", what));
  if (pattern_.starts_with("re:")) {
    // kldq's own matcher (the tokenizer's), not std::regex: bounded nesting, recursion and
    // steps, so a hostile selector fails with a message instead of hanging or overflowing.
    try {
      regex_ = std::make_shared<io::Regex>(io::Regex::compile(selector_regex(pattern_.substr(3))));
    } catch (const io::RegexError& e) {
      throw ConfigError(fmt::format("{}: invalid regex ({})", what, e.what()));
    }
  }
}

bool LayerSelector::matches(const std::string& id) const {
  if (!regex_) return glob_match(pattern_, id);
  try {
    return regex_->full_match(std::u32string(id.begin(), id.end()));  // HF ids are ASCII
  } catch (const io::RegexError& e) {
    throw ConfigError(fmt::format("layer selector: {}", e.what()));
  }
}

model::LayerFormats Plan::resolve(const std::vector<model::LayerId>& ids,
                                  std::vector<std::string>* unmatched) const {
  model::LayerFormats out;
  std::vector<bool> used(overrides.size(), false);
  for (const auto& id : ids) {
    const std::string name = id.name();
    formats::FormatSpec spec = base;
    for (size_t i = 0; i < overrides.size(); ++i)
      if (overrides[i].layers.matches(name)) spec = overrides[i].format, used[i] = true;
    out[name] = spec;
  }
  if (unmatched)
    for (size_t i = 0; i < overrides.size(); ++i)
      if (!used[i]) unmatched->push_back(overrides[i].layers.pattern());
  return out;
}

namespace {

std::map<std::string, std::string> string_map(const io::Doc& d) {
  d.require_object();
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : d.json().items()) out[key] = d[key].str();
  return out;
}

}  // namespace

nlohmann::json to_json(const PlannerRecord& r) {
  nlohmann::json j = {{"strategy", r.strategy}};
  io::put_optional(j, "experiment", r.experiment);
  io::put_optional(j, "profiles", r.profiles);
  io::put_optional(j, "model", r.model);
  io::put_optional(j, "model_fingerprint", r.model_fingerprint);
  if (r.calibration) j["calibration"] = calib::to_json(*r.calibration);
  io::put_optional(j, "mode", r.mode);
  io::put_optional(j, "granularity", r.granularity);
  io::put_optional(j, "anchor_base", r.anchor_base);
  io::put_optional(j, "anchor_baseline_kl", r.anchor_baseline_kl);
  io::put_optional(j, "predicted_kl", r.predicted_kl);
  io::put_optional(j, "params", r.params);
  io::put_optional(j, "weight_bytes", r.weight_bytes);
  io::put_optional(j, "bits_per_weight", r.bits_per_weight);
  io::put_optional(j, "unit_formats", r.unit_formats);
  io::put_optional(j, "kldq_version", r.kldq_version);
  io::put_optional(j, "percent", r.percent);
  io::put_optional(j, "by", r.by);
  io::put_optional(j, "seed", r.seed);
  io::put_optional(j, "budget_bpw", r.budget_bpw);
  io::put_optional(j, "fused_groups", r.fused_groups);
  return j;
}

PlannerRecord planner_from_json(const io::Doc& d) {
  d.keys({"strategy",
          "experiment",
          "profiles",
          "model",
          "model_fingerprint",
          "calibration",
          "mode",
          "granularity",
          "anchor_base",
          "anchor_baseline_kl",
          "predicted_kl",
          "params",
          "weight_bytes",
          "bits_per_weight",
          "unit_formats",
          "kldq_version",
          "percent",
          "by",
          "seed",
          "budget_bpw",
          "fused_groups"});
  const auto str = [](const io::Doc& v) { return v.str(); };
  const auto finite = [](const io::Doc& v) { return v.finite(); };
  const auto count = [](const io::Doc& v) { return v.unsigned_integer(); };
  PlannerRecord r;
  r.strategy = d["strategy"].str();
  d.optional("experiment", r.experiment, str);
  d.optional("profiles", r.profiles, [](const io::Doc& v) { return v.strings(); });
  d.optional("model", r.model, str);
  d.optional("model_fingerprint", r.model_fingerprint, str);
  d.optional("calibration", r.calibration, calib::calibration_from_json);
  d.optional("mode", r.mode, str);
  d.optional("granularity", r.granularity, str);
  d.optional("anchor_base", r.anchor_base, str);
  d.optional("anchor_baseline_kl", r.anchor_baseline_kl, finite);
  d.optional("predicted_kl", r.predicted_kl, finite);
  d.optional("params", r.params, count);
  d.optional("weight_bytes", r.weight_bytes, count);
  d.optional("bits_per_weight", r.bits_per_weight, finite);
  d.optional("unit_formats", r.unit_formats, string_map);
  d.optional("kldq_version", r.kldq_version, str);
  d.optional("percent", r.percent, finite);
  d.optional("by", r.by, str);
  d.optional("seed", r.seed, count);
  d.optional("budget_bpw", r.budget_bpw, finite);
  d.optional("fused_groups", r.fused_groups, [](const io::Doc& v) { return v.boolean(); });
  return r;
}

nlohmann::json Plan::to_json() const {
  nlohmann::json ov = nlohmann::json::array();
  for (const auto& o : overrides)
    ov.push_back({{"layers", o.layers.pattern()}, {"format", o.format.name()}});
  nlohmann::json j = {{"method", method}, {"base", base.name()}, {"overrides", ov}};
  if (planner) j["planner"] = quant::to_json(*planner);
  if (!method_settings.is_null()) j["method_settings"] = method_settings;
  return j;
}

Plan Plan::from_json(const nlohmann::json& j, const std::string& file) {
  const io::Doc d(j, file, io::DocKind::CONFIG);
  d.keys({"method", "base", "overrides", "layers", "kldq_version", "planner", "method_settings"});
  Plan p;
  p.source = file;
  if (d.has("planner")) p.planner = planner_from_json(d["planner"]);
  if (d.contains("method")) p.method = parse_method(d["method"].str(), d["method"].where());
  if (d.contains("method_settings")) {
    // Checked here, read back by quantize and eval (RecordedMethod).
    const io::Doc settings = d["method_settings"];
    const RecordedMethod r = method_from_json(settings);
    if (r.options.method != p.method)
      settings["method"].fail(fmt::format("{}, but the plan's method is {}",
                                          method_name(r.options.method), method_name(p.method)));
    p.method_settings = settings.json();
  }
  p.base = formats::FormatSpec::parse(d["base"].str(), d["base"].where());
  if (d.contains("overrides")) {
    const io::Doc ov = d["overrides"];
    for (size_t i = 0; i < ov.size(); ++i) {
      const io::Doc o = ov[i];
      o.require_object();
      p.overrides.push_back({LayerSelector(o["layers"].str(), o["layers"].where()),
                             formats::FormatSpec::parse(o["format"].str(), o["format"].where())});
    }
  }
  return p;
}

}  // namespace kldq::quant
