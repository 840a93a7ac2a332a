// Quantization plans as data (docs/PROTOCOLS.md, "Plans"): a method, a base format, and per-layer
// overrides selected by glob (`model.layers.*.mlp.down_proj`) or regex (`re:...`) over HF layer
// ids. quantization.json and `kldq plan` output use this schema (docs/FORMATS.md).
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "kldq/formats/format.hpp"
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

struct Plan {
  Method method = Method::RTN;
  formats::FormatSpec base;
  std::vector<Override> overrides;  // in order; the last one that matches a layer wins
  // What made the plan (`kldq plan`: strategy, profiles, model fingerprint, predicted_kl, ...);
  // null for plans written by hand. Kept as data: nothing in quantization depends on it.
  nlohmann::json planner;
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
