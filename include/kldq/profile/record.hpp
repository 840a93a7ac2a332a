// profile.json's unit record, defined once: the profile writes it (profile::to_json) and the
// planner reads it back (plan::Profile::from_json), so the two cannot drift apart.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kldq/io/document.hpp"
#include "kldq/profile/profile.hpp"

namespace kldq::profile {

struct UnitRecord {
  std::string id;  // HF module name of the profile's granularity (valid_unit_id)
  uint64_t params = 0, bytes_base = 0, bytes_bf16 = 0;
  double kl_mean = 0, kl_stderr = 0;
  double top1_agree = 0;  // profiles written before it was recorded read as 0
};

// {"id", "params", "bytes_base", "bytes_bf16", "kl_mean", "kl_stderr", "top1_agree"}: the keys
// every unit has; the writer adds kl_gain (restore-one) and the proxies' keys.
nlohmann::json to_json(const UnitRecord& u);
// A unit read back and checked: counts >= 0 (params > 0), finite KL, an id of `granularity`.
UnitRecord unit_from_json(const io::Doc& d, Granularity granularity);

// A profile's unit ids are literal HF module names of its granularity: a linear layer
// (`model.layers.3.mlp.up_proj`), a half block (`model.layers.3.self_attn` / `.mlp`) or a block
// (`model.layers.3`). Plans match them as globs, so anything else (`*`, `model.layers.?`) would
// select other layers than the ones that were measured.
bool valid_unit_id(const std::string& id, Granularity granularity);

}  // namespace kldq::profile
