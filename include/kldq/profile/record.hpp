// profile.json, defined once: the profile task and the shard merge write it (to_json of a
// ProfileRecord), the planner and the merge read it back (profile_from_json, through io::Doc), so
// writers and readers cannot drift apart. Keys the profile of an older kldq, or a profile written
// by hand, may lack are optional here and written only when set.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kldq/calib/calibration.hpp"
#include "kldq/io/document.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/quant/method.hpp"

namespace kldq::profile {

// A unit: {"id", "params", "bytes_base", "bytes_bf16", "kl_mean", "kl_stderr", "top1_agree"},
// and "kl_gain" (restore-one) and the proxies' keys (--proxies) when set.
struct UnitRecord {
  std::string id;  // HF module name of the profile's granularity (valid_unit_id)
  uint64_t params = 0, bytes_base = 0, bytes_bf16 = 0;
  double kl_mean = 0, kl_stderr = 0;
  double top1_agree = 0;  // profiles written before it was recorded read as 0
  std::optional<double> kl_gain = std::nullopt;  // restore-one: baseline_kl - kl_mean
  // weight_mse, weight_sqnr_db, output_rel_error, fisher: null in the file where not finite
  // (an error-free unit's SQNR), NaN here.
  std::optional<ProxyStats> proxies = std::nullopt;
};
nlohmann::json to_json(const UnitRecord& u);
// A unit read back and checked: counts >= 0 (params > 0), finite KL, an id of `granularity`.
UnitRecord unit_from_json(const io::Doc& d, Granularity granularity);

// "shard" (a shard's profile only): its share of the units (core/shard.hpp).
struct ShardRecord {
  uint64_t index = 0, count = 1;
  uint64_t units = 0;  // of the whole profile
};

// "proxies": each proxy's Spearman correlation with `against` (kl_mean, or kl_gain for
// restore-one) over every unit (null where spearman gives none), and the windows per backward
// pass. A shard's holds fisher_batch only: merge_shards computes the correlations.
struct ProxyCorrelations {
  std::optional<double> weight_mse, weight_sqnr_db, output_rel_error, fisher;
};
struct ProxySummary {
  std::optional<ProxyCorrelations> spearman;
  std::optional<std::string> against;
  int64_t fisher_batch = 0;
};
// The summary over `proxies` (one per unit) against `sensitivity` (kl_mean or kl_gain, named by
// `against`), `batch` windows per backward pass.
ProxySummary proxy_summary(const std::vector<ProxyStats>& proxies,
                           const std::vector<double>& sensitivity, const std::string& against,
                           int64_t batch);

// What a profile run measured about itself, never compared between shards: merge_shards sums the
// times and streamed bytes, takes the peaks' maxima and keeps the first shard's residency.
struct ProfileFigures {
  std::optional<double> seconds, seconds_profile;
  std::optional<uint64_t> peak_cuda_bytes, peak_host_bytes, streamed_bytes;
  std::optional<std::string> residency;
  std::optional<std::vector<std::string>> devices;  // with several devices (--gpus)
  std::optional<uint64_t> shards;                   // a merged profile: how many
};

struct ProfileRecord {
  // What was profiled: the shards of one profile agree on all of it.
  Mode mode = Mode::QUANTIZE_ONE;
  Granularity granularity = Granularity::LINEAR;
  std::string base;  // the format's canonical name
  quant::Method method = quant::Method::RTN;
  std::optional<int64_t> batch;  // windows per forward: GEMM shapes, so the bits
  std::optional<bool> cached;
  // The identity the profile task records (profile_checkpoint).
  nlohmann::json method_settings;  // quant::method_json without calibration; null: not recorded
  std::optional<std::string> kldq_version, model, model_fingerprint;
  std::optional<calib::CalibrationIdentity> calibration;  // the windows; the method's too
  std::optional<std::string> dtype, device, device_name;
  // What was measured: the fully quantized model ("baseline_kl", "baseline_kl_stderr",
  // "baseline_top1_agree") and each unit, in model order.
  double baseline_kl = 0;
  std::optional<double> baseline_kl_stderr, baseline_top1_agree;
  std::vector<UnitRecord> units;
  std::optional<ProxySummary> proxies;  // --proxies
  std::optional<ShardRecord> shard;     // --shard
  ProfileFigures figures;
};
nlohmann::json to_json(const ProfileRecord& r);
// Read back and checked (errors name the file and key path): the vocabularies' names, a known
// base format, method settings of the profile's method, units of its granularity given once,
// each with kl_gain in a restore-one profile and the proxies' keys where "proxies" is recorded.
ProfileRecord profile_from_json(const io::Doc& d);

// The record of `r` with what run_profile knows (units, baseline, mode, granularity, base, batch,
// cached, shard, proxies); the profile task adds the identity and the figures.
ProfileRecord record_of(const Result& r, const Options& o, quant::Method method);

// A profile's unit ids are literal HF module names of its granularity: a linear layer
// (`model.layers.3.mlp.up_proj`), a half block (`model.layers.3.self_attn` / `.mlp`) or a block
// (`model.layers.3`). Plans match them as globs, so anything else (`*`, `model.layers.?`) would
// select other layers than the ones that were measured.
bool valid_unit_id(const std::string& id, Granularity granularity);

}  // namespace kldq::profile
