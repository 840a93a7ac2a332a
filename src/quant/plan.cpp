// Layer selectors and plan resolution, with errors that name the key path of the plan.
#include "kldq/quant/plan.hpp"

#include "kldq/quant/quantizer.hpp"

#include <fmt/format.h>

#include "kldq/core/error.hpp"

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

const nlohmann::json& member(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) throw ConfigError(fmt::format("{}.{}: missing", where, key));
  return j[key];
}

std::string string_at(const nlohmann::json& j, const std::string& path) {
  if (!j.is_string())
    throw ConfigError(fmt::format("{}: expected a string, got {}", path, j.dump()));
  return j.get<std::string>();
}

}  // namespace

LayerSelector::LayerSelector(std::string pattern, const std::string& what)
    : pattern_(std::move(pattern)) {
  if (pattern_.empty() || pattern_ == "re:")
    throw ConfigError(fmt::format("{}: empty layer pattern", what));
  if (pattern_.starts_with("re:")) {
    is_regex_ = true;
    try {
      regex_ = std::regex(pattern_.substr(3), std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw ConfigError(
          fmt::format("{}: invalid regex '{}' ({})", what, pattern_.substr(3), e.what()));
    }
  }
}

bool LayerSelector::matches(const std::string& id) const {
  return is_regex_ ? std::regex_match(id, regex_) : glob_match(pattern_, id);
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

nlohmann::json Plan::to_json() const {
  nlohmann::json ov = nlohmann::json::array();
  for (const auto& o : overrides)
    ov.push_back({{"layers", o.layers.pattern()}, {"format", o.format.name()}});
  nlohmann::json j = {{"method", method}, {"base", base.name()}, {"overrides", ov}};
  if (!planner.is_null()) j["planner"] = planner;
  return j;
}

Plan Plan::from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) throw ConfigError(fmt::format("{}: expected an object", where));
  for (const auto& [key, value] : j.items())
    if (key != "method" && key != "base" && key != "overrides" && key != "layers" &&
        key != "kldq_version" && key != "planner" && key != "method_settings")
      throw ConfigError(fmt::format("{}.{}: unknown key", where, key));
  Plan p;
  if (j.contains("planner")) {
    if (!j["planner"].is_object())
      throw ConfigError(fmt::format("{}.planner: expected an object", where));
    p.planner = j["planner"];
    // The keys kldq reads back (quantize and eval check the fingerprint; eval reports the
    // prediction); the rest of the record is carried as written.
    for (const char* key : {"model", "model_fingerprint"})
      if (p.planner.contains(key)) string_at(p.planner[key], where + ".planner." + key);
    if (p.planner.contains("predicted_kl") && !p.planner["predicted_kl"].is_number())
      throw ConfigError(fmt::format("{}.planner.predicted_kl: expected a number", where));
  }
  if (j.contains("method")) {
    p.method = string_at(j["method"], where + ".method");
    check_method(p.method, where + ".method");
  }
  p.base = formats::FormatSpec::parse(string_at(member(j, "base", where), where + ".base"),
                                      where + ".base");
  if (j.contains("overrides")) {
    const auto& ov = j["overrides"];
    if (!ov.is_array()) throw ConfigError(fmt::format("{}.overrides: expected a list", where));
    for (size_t i = 0; i < ov.size(); ++i) {
      const std::string at = fmt::format("{}.overrides[{}]", where, i);
      if (!ov[i].is_object()) throw ConfigError(fmt::format("{}: expected an object", at));
      const std::string pattern = string_at(member(ov[i], "layers", at), at + ".layers");
      const std::string format = string_at(member(ov[i], "format", at), at + ".format");
      p.overrides.push_back({LayerSelector(pattern, at + ".layers"),
                             formats::FormatSpec::parse(format, at + ".format")});
    }
  }
  return p;
}

}  // namespace kldq::quant
