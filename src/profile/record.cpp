// profile.json: writing a ProfileRecord, and reading one back with checks in the document reader.
#include "kldq/profile/record.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <set>
#include <string_view>

#include "kldq/formats/format.hpp"
#include "kldq/model/layer_id.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::profile {
namespace {

// A non-negative count (params, bytes).
uint64_t count(const io::Doc& d) {
  const nlohmann::json& v = d.json();
  if (!(v.is_number_integer() || v.is_number_unsigned()) || v.get<int64_t>() < 0)
    d.fail(fmt::format("expected a count, got {}", d.shown()));
  return v.get<uint64_t>();
}

nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

// A proxy as the file holds it: a number, or null where it was not finite (read as NaN; spearman
// gives no correlation for any value not finite).
double proxy_value(const io::Doc& d) {
  return d.is_null() ? std::numeric_limits<double>::quiet_NaN() : d.finite();
}

const char* const kProxyKeys[] = {"weight_mse", "weight_sqnr_db", "output_rel_error", "fisher"};

}  // namespace

nlohmann::json to_json(const UnitRecord& u) {
  nlohmann::json j = {{"id", u.id},
                      {"params", u.params},
                      {"bytes_base", u.bytes_base},
                      {"bytes_bf16", u.bytes_bf16},
                      {"kl_mean", u.kl_mean},
                      {"kl_stderr", u.kl_stderr},
                      {"top1_agree", u.top1_agree}};
  io::put_optional(j, "kl_gain", u.kl_gain);
  if (u.proxies) {
    j["weight_mse"] = finite_or_null(u.proxies->weight_mse);
    j["weight_sqnr_db"] = finite_or_null(u.proxies->weight_sqnr_db);
    j["output_rel_error"] = finite_or_null(u.proxies->output_rel_error);
    j["fisher"] = finite_or_null(u.proxies->fisher);
  }
  return j;
}

UnitRecord unit_from_json(const io::Doc& d, Granularity granularity) {
  UnitRecord u{d["id"].str(),
               count(d["params"]),
               count(d["bytes_base"]),
               count(d["bytes_bf16"]),
               d["kl_mean"].finite(),
               d["kl_stderr"].finite(),
               d.has("top1_agree") ? d["top1_agree"].finite() : 0.0};
  if (u.params == 0) d["params"].fail("expected > 0");
  if (!valid_unit_id(u.id, granularity))
    d["id"].fail(fmt::format("'{}' is not a {} unit name (model.layers.N{})", u.id,
                             granularity_name(granularity),
                             granularity == Granularity::LINEAR       ? ".mlp.up_proj, ..."
                             : granularity == Granularity::HALF_BLOCK ? ".self_attn or .mlp"
                                                                      : ""));
  d.optional("kl_gain", u.kl_gain, [](const io::Doc& v) { return v.finite(); });
  if (std::any_of(std::begin(kProxyKeys), std::end(kProxyKeys),
                  [&](const char* k) { return d.contains(k); }))
    u.proxies = ProxyStats{proxy_value(d["weight_mse"]), proxy_value(d["weight_sqnr_db"]),
                           proxy_value(d["output_rel_error"]), proxy_value(d["fisher"])};
  return u;
}

ProxySummary proxy_summary(const std::vector<ProxyStats>& proxies,
                           const std::vector<double>& sensitivity, const std::string& against,
                           int64_t batch) {
  auto corr = [&](double ProxyStats::*field) {
    std::vector<double> v;
    for (const ProxyStats& p : proxies) v.push_back(p.*field);
    return spearman(v, sensitivity);
  };
  return {ProxyCorrelations{corr(&ProxyStats::weight_mse), corr(&ProxyStats::weight_sqnr_db),
                            corr(&ProxyStats::output_rel_error), corr(&ProxyStats::fisher)},
          against, batch};
}

namespace {

nlohmann::json to_json(const ProxySummary& p) {
  nlohmann::json j = {{"fisher_batch", p.fisher_batch}};
  io::put_optional(j, "against", p.against);
  if (p.spearman) {
    auto corr = [](const std::optional<double>& r) { return r ? nlohmann::json(*r) : nullptr; };
    j["spearman"] = {{"weight_mse", corr(p.spearman->weight_mse)},
                     {"weight_sqnr_db", corr(p.spearman->weight_sqnr_db)},
                     {"output_rel_error", corr(p.spearman->output_rel_error)},
                     {"fisher", corr(p.spearman->fisher)}};
  }
  return j;
}

ProxySummary proxies_from_json(const io::Doc& d) {
  d.keys({"spearman", "against", "fisher_batch"});
  ProxySummary p;
  p.fisher_batch = d["fisher_batch"].integer(1, std::numeric_limits<int64_t>::max());
  d.optional("against", p.against, [](const io::Doc& v) { return v.str(); });
  if (d.has("spearman")) {
    const io::Doc s = d["spearman"];
    s.keys({"weight_mse", "weight_sqnr_db", "output_rel_error", "fisher"});
    auto corr = [&](const char* k) {
      return s[k].is_null() ? std::nullopt : std::optional(s[k].number(-1, 1));
    };
    p.spearman = {corr("weight_mse"), corr("weight_sqnr_db"), corr("output_rel_error"),
                  corr("fisher")};
  }
  return p;
}

void put_figures(nlohmann::json& j, const ProfileFigures& f) {
  io::put_optional(j, "seconds", f.seconds);
  io::put_optional(j, "seconds_profile", f.seconds_profile);
  io::put_optional(j, "peak_cuda_bytes", f.peak_cuda_bytes);
  io::put_optional(j, "peak_host_bytes", f.peak_host_bytes);
  io::put_optional(j, "streamed_bytes", f.streamed_bytes);
  io::put_optional(j, "residency", f.residency);
  io::put_optional(j, "devices", f.devices);
  io::put_optional(j, "shards", f.shards);
}

ProfileFigures figures_from_json(const io::Doc& d) {
  const auto seconds = [](const io::Doc& v) { return v.number(0, 1e12); };
  const auto bytes = [](const io::Doc& v) { return v.unsigned_integer(); };
  ProfileFigures f;
  d.optional("seconds", f.seconds, seconds);
  d.optional("seconds_profile", f.seconds_profile, seconds);
  d.optional("peak_cuda_bytes", f.peak_cuda_bytes, bytes);
  d.optional("peak_host_bytes", f.peak_host_bytes, bytes);
  d.optional("streamed_bytes", f.streamed_bytes, bytes);
  d.optional("residency", f.residency, [](const io::Doc& v) { return v.str(); });
  d.optional("devices", f.devices, [](const io::Doc& v) { return v.strings(); });
  d.optional("shards", f.shards, bytes);
  return f;
}

// What was profiled, and the identity the profile task records.
void put_identity(nlohmann::json& j, const ProfileRecord& r) {
  j["mode"] = mode_name(r.mode);
  j["granularity"] = granularity_name(r.granularity);
  j["base"] = r.base;
  j["method"] = r.method;
  io::put_optional(j, "batch", r.batch);
  io::put_optional(j, "cached", r.cached);
  if (!r.method_settings.is_null()) j["method_settings"] = r.method_settings;
  io::put_optional(j, "kldq_version", r.kldq_version);
  io::put_optional(j, "model", r.model);
  io::put_optional(j, "model_fingerprint", r.model_fingerprint);
  if (r.calibration) j["calibration"] = calib::to_json(*r.calibration);
  io::put_optional(j, "dtype", r.dtype);
  io::put_optional(j, "device", r.device);
  io::put_optional(j, "device_name", r.device_name);
}

void identity_from_json(const io::Doc& d, ProfileRecord& r) {
  const auto str = [](const io::Doc& v) { return v.str(); };
  r.mode = kModes.parse(d["mode"].str(), d["mode"].where());
  r.granularity = kGranularities.parse(d["granularity"].str(), d["granularity"].where());
  r.base = formats::FormatSpec::parse(d["base"].str(), d["base"].where()).name();
  r.method = quant::parse_method(d["method"].str(), d["method"].where());
  d.optional("batch", r.batch,
             [](const io::Doc& v) { return v.integer(1, std::numeric_limits<int64_t>::max()); });
  d.optional("cached", r.cached, [](const io::Doc& v) { return v.boolean(); });
  if (d.has("method_settings")) {
    const io::Doc settings = d["method_settings"];
    const quant::RecordedMethod m = quant::method_from_json(settings);
    if (m.options.method != r.method)
      settings["method"].fail(fmt::format("{}, but the method is {}",
                                          quant::method_name(m.options.method),
                                          quant::method_name(r.method)));
    r.method_settings = settings.json();
  }
  d.optional("kldq_version", r.kldq_version, str);
  d.optional("model", r.model, str);
  d.optional("model_fingerprint", r.model_fingerprint, str);
  d.optional("calibration", r.calibration, calib::calibration_from_json);
  d.optional("dtype", r.dtype, str);
  d.optional("device", r.device, str);
  d.optional("device_name", r.device_name, str);
}

// The units, given once each; kl_gain in a restore-one profile, the proxies' keys with "proxies".
void units_from_json(const io::Doc& d, ProfileRecord& r) {
  const io::Doc units = d["units"];
  std::set<std::string> seen;
  for (size_t i = 0; i < units.size(); ++i) {
    UnitRecord u = unit_from_json(units[i], r.granularity);
    if (!seen.insert(u.id).second) units[i]["id"].fail(fmt::format("unit {} appears twice", u.id));
    if (r.mode == Mode::RESTORE_ONE && !u.kl_gain) units[i]["kl_gain"].finite();  // the error
    if (r.proxies || u.proxies)
      for (const char* k : kProxyKeys) (void)units[i][k];  // "missing" when absent
    r.units.push_back(std::move(u));
  }
}

}  // namespace

nlohmann::json to_json(const ProfileRecord& r) {
  nlohmann::json units = nlohmann::json::array();
  for (const UnitRecord& u : r.units) units.push_back(to_json(u));
  nlohmann::json j = {{"units", units}, {"baseline_kl", r.baseline_kl}};
  io::put_optional(j, "baseline_kl_stderr", r.baseline_kl_stderr);
  io::put_optional(j, "baseline_top1_agree", r.baseline_top1_agree);
  put_identity(j, r);
  if (r.proxies) j["proxies"] = to_json(*r.proxies);
  if (r.shard)
    j["shard"] = {{"index", r.shard->index}, {"count", r.shard->count}, {"units", r.shard->units}};
  put_figures(j, r.figures);
  return j;
}

ProfileRecord profile_from_json(const io::Doc& d) {
  d.require_object();
  ProfileRecord r;
  identity_from_json(d, r);
  const auto finite = [](const io::Doc& v) { return v.finite(); };
  r.baseline_kl = d["baseline_kl"].finite();
  d.optional("baseline_kl_stderr", r.baseline_kl_stderr, finite);
  d.optional("baseline_top1_agree", r.baseline_top1_agree, finite);
  if (d.has("proxies")) r.proxies = proxies_from_json(d["proxies"]);
  if (d.has("shard")) {
    const io::Doc s = d["shard"];
    s.keys({"index", "count", "units"});
    r.shard = ShardRecord{s["index"].unsigned_integer(), s["count"].unsigned_integer(),
                          s["units"].unsigned_integer()};
  }
  units_from_json(d, r);
  r.figures = figures_from_json(d);
  return r;
}

ProfileRecord record_of(const Result& res, const Options& o, quant::Method method) {
  ProfileRecord r;
  r.mode = o.mode, r.granularity = o.granularity, r.base = o.base.name(), r.method = method;
  r.batch = o.batch, r.cached = o.cached;
  r.baseline_kl = res.baseline.mean;
  r.baseline_kl_stderr = res.baseline.stderr_, r.baseline_top1_agree = res.baseline.top1;
  const bool restore = o.mode == Mode::RESTORE_ONE;
  std::vector<ProxyStats> proxies;
  std::vector<double> sensitivity;
  for (const UnitResult& u : res.units) {
    UnitRecord rec{u.unit.id, u.params,     u.bytes_base, u.bytes_bf16,
                   u.kl.mean, u.kl.stderr_, u.kl.top1};
    if (restore) rec.kl_gain = res.baseline.mean - u.kl.mean;
    rec.proxies = u.proxies;
    r.units.push_back(std::move(rec));
    proxies.push_back(u.proxies.value_or(ProxyStats{}));
    sensitivity.push_back(restore ? res.baseline.mean - u.kl.mean : u.kl.mean);
  }
  if (!o.shard.whole()) {
    // The correlations need every unit: merge_shards computes them.
    r.shard = ShardRecord{o.shard.index, o.shard.count, res.units_total};
    if (o.proxies) r.proxies = ProxySummary{std::nullopt, std::nullopt, o.batch};
  } else if (o.proxies) {
    r.proxies = proxy_summary(proxies, sensitivity, restore ? "kl_gain" : "kl_mean", o.batch);
  }
  return r;
}

bool valid_unit_id(const std::string& id, Granularity granularity) {
  if (granularity == Granularity::LINEAR) {
    const auto l = model::LayerId::parse(id);
    return l && l->name() == id;
  }
  constexpr std::string_view kPrefix = "model.layers.";
  if (!id.starts_with(kPrefix)) return false;
  const std::string rest = id.substr(kPrefix.size());
  const size_t digits = rest.find_first_not_of("0123456789");
  const std::string block = rest.substr(0, digits),
                    tail = digits == std::string::npos ? std::string() : rest.substr(digits);
  if (block.empty() || block.size() > 6 || (block.size() > 1 && block[0] == '0')) return false;
  if (granularity == Granularity::BLOCK) return tail.empty();
  return granularity == Granularity::HALF_BLOCK && (tail == ".self_attn" || tail == ".mlp");
}

}  // namespace kldq::profile
