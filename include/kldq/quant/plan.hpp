// Quantization plans as data (docs/PROTOCOLS.md, "Plans"): a method, a base format, and per-layer
// overrides selected by glob (`model.layers.*.mlp.down_proj`) or regex (`re:...`) over HF layer
// ids, and the record of what made the plan. quantization.json and `kldq plan` output use this
// schema (docs/FORMATS.md).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kldq/calib/calibration.hpp"
#include "kldq/formats/format.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/tokenizer/regex.hpp"
#include "kldq/model/layer_id.hpp"
#include "kldq/model/layout.hpp"
#include "kldq/quant/method.hpp"

namespace kldq::quant {

// A selection of layer ids: a glob (`*` any run of characters, `?` one character) or, with the
// prefix `re:`, a regex in the syntax of kldq's matcher (io/tokenizer/regex.hpp: groups,
// alternation, quantifiers, classes; no anchors), bounded in steps; both match the whole id.
class LayerSelector {
 public:
  // ConfigError naming `what` for an invalid regex or an empty pattern.
  LayerSelector(std::string pattern, const std::string& what);
  bool matches(const std::string& layer_id) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  std::shared_ptr<const io::Regex> regex_;  // `re:` selectors; null for globs
};

struct Override {
  LayerSelector layers;
  formats::FormatSpec format;
};

// plan.json's "planner": what made the plan, defined once (`kldq plan` writes it, and an
// experiment's uniform points their strategy and experiment; quantize checks the fingerprint, eval
// reports predicted_kl). Keys other than the strategy are written when known (a plan from
// profiles has all but the request's keys of other strategies); no other key is read.
struct PlannerRecord {
  std::string strategy;                   // plan::kStrategies' name
  std::optional<std::string> experiment;  // an experiment's uniform point: the experiment's name
  // The profiles' identity: their files, model and checkpoint fingerprint, calibration, mode and
  // granularity (profile::kModes', kGranularities' names), the anchor's base and baseline KL.
  std::optional<std::vector<std::string>> profiles;
  std::optional<std::string> model, model_fingerprint;
  std::optional<calib::CalibrationIdentity> calibration;
  std::optional<std::string> mode, granularity, anchor_base;
  std::optional<double> anchor_baseline_kl;
  // What the plan predicts and weighs (the decoder's linear layers as stored).
  std::optional<double> predicted_kl;
  std::optional<uint64_t> params, weight_bytes;
  std::optional<double> bits_per_weight;
  std::optional<std::map<std::string, std::string>> unit_formats;  // profile unit id -> format
  std::optional<std::string> kldq_version;
  // The request: percent and by (restore-top, random; by: plan::kBys' name), seed (random),
  // budget_bpw (budget), fused_groups (written when on).
  std::optional<double> percent;
  std::optional<std::string> by;
  std::optional<uint64_t> seed;
  std::optional<double> budget_bpw;
  std::optional<bool> fused_groups;
};
nlohmann::json to_json(const PlannerRecord& r);
// ConfigError naming the file and the key path (io::Doc) for an unknown key or a value of the
// wrong type; predicted_kl, anchor_baseline_kl, bits_per_weight and the request's numbers finite.
PlannerRecord planner_from_json(const io::Doc& d);

struct Plan {
  Method method = Method::RTN;
  formats::FormatSpec base;
  std::vector<Override> overrides;  // in order; the last one that matches a layer wins
  // What made the plan; none for plans written by hand. Kept as data: nothing in quantization
  // depends on it but the fingerprint check (read_plan_for).
  std::optional<PlannerRecord> planner;
  // The method's settings and calibration identity the plan's layers were fitted with
  // (quant::method_json; quantization.json, and `kldq plan` from a profile's); null when not
  // recorded. quantize and eval --plan take them as defaults (quant::method_from_json).
  nlohmann::json method_settings;
  std::string source;  // where from_json read it (the plan file), for messages; not written

  // The format of every id in `ids` (HF names). Selectors that match none are returned in
  // `unmatched` (callers warn).
  model::LayerFormats resolve(const std::vector<model::LayerId>& ids,
                              std::vector<std::string>* unmatched = nullptr) const;

  // {"method", "base", "overrides": [{"layers", "format"}], "planner", "method_settings"};
  // from_json errors name the file and the key path (io::Doc).
  nlohmann::json to_json() const;
  static Plan from_json(const nlohmann::json& j, const std::string& file);
};

}  // namespace kldq::quant
