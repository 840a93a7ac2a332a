// `kldq profile MODEL --base FORMAT [--method rtn|hqq|gptq|awq] --calib FILE [--samples N]
// [--seq-len T] [--seed S] [--mode quantize-one|restore-one]
// [--granularity linear|half-block|block] [--batch B] [--naive] [--proxies] [--shard i/n]
// [--csv FILE] -o profile.json`: per-unit KL sensitivity and optionally its proxies
// (docs/PROTOCOLS.md, "Sensitivity profile"); the units also as CSV.
// `kldq profile --merge SHARD.json... [--csv FILE] -o profile.json`: shards merged into one.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>
#include <set>

#include "commands.hpp"
#include "kldq/build_config.hpp"
#include "kldq/calib/calibration.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/csv.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/profile/merge.hpp"
#include "kldq/profile/profile.hpp"

namespace kldq::cli {
namespace {

// profile.json's units as CSV (CRLF line ends, as RFC 4180): a header of their keys, the known
// ones in the order below and any others after them alphabetically, then one row per unit.
std::string units_csv(const nlohmann::json& units) {
  static const std::vector<std::string> kOrder = {
      "id",         "params",  "bytes_base", "bytes_bf16",     "kl_mean",          "kl_stderr",
      "top1_agree", "kl_gain", "weight_mse", "weight_sqnr_db", "output_rel_error", "fisher"};
  std::vector<std::string> cols;
  for (const std::string& k : kOrder)
    if (std::any_of(units.begin(), units.end(), [&](const auto& u) { return u.contains(k); }))
      cols.push_back(k);
  std::set<std::string> rest;
  for (const auto& u : units)
    for (const auto& [k, v] : u.items())
      if (std::find(kOrder.begin(), kOrder.end(), k) == kOrder.end()) rest.insert(k);
  cols.insert(cols.end(), rest.begin(), rest.end());
  auto row = [&](auto&& field) {
    std::string line;
    for (size_t c = 0; c < cols.size(); ++c) {
      if (c) line += ',';
      line += field(cols[c]);
    }
    return line + "\r\n";
  };
  std::string text = row([](const std::string& k) { return io::csv_field(k); });
  for (const auto& u : units)
    text += row([&](const std::string& k) { return io::csv_field(u.value(k, nlohmann::json())); });
  return text;
}

// The command line's profile options (caches_on_host: decided with the residency).
profile::Options options_of(const ProfileCliOptions& o) {
  profile::Options po;
  po.mode = profile::parse_mode(o.mode, "--mode");
  po.granularity = profile::parse_granularity(o.granularity, "--granularity");
  po.base = base_format(o.base, o.method.group, "--base");
  po.batch = o.batch;
  po.cached = !o.naive;
  po.proxies = o.proxies;
  po.shard = parse_shard(o.shard, "--shard", "units");
  return po;
}

// Device bytes of the profile: the model's weights, the passes' working set and, for a calibrated
// method, its quantization's, which comes first.
model::MemoryNeeds profile_needs(const std::string& model, const profile::Options& po,
                                 const quant::MethodOptions& method, const calib::Calibration& cal,
                                 const RunContext& ctx) {
  const model::ModelConfig config =
      model::load_config(std::filesystem::path(model) / "config.json");
  model::MemoryNeeds needs =
      profile::memory_needs(model::Decoder::weight_needs(model, ctx.dtype), config, po,
                            cal.ids.size(0), cal.ids.size(1), ctx.dtype);
  // A calibrated method's quantization comes first and may need more than the passes.
  if (quant::needs_calibration(method.method))
    needs.working = std::max(
        needs.working,
        quant::memory_needs(needs, config, {}, method, cal.ids.size(0), cal.ids.size(1), ctx.dtype)
            .working);
  return needs;
}

// Writes profile.json, and the CSV when asked for. Both texts are made before either file is
// written, and the CSV is removed again if the JSON cannot be written: no partial output.
void write_profile(const std::filesystem::path& out, const std::filesystem::path& csv,
                   const nlohmann::json& j) {
  const std::string json_text = j.dump(2) + "\n";
  if (!csv.empty()) {
    io::write_file_atomic(csv, units_csv(j["units"]));
    try {
      io::write_file_atomic(out, json_text);
    } catch (...) {
      remove_tree(csv);
      throw;
    }
  } else {
    io::write_file_atomic(out, json_text);
  }
}

// The table printed after a profile: the ten most sensitive units first (largest KL quantized
// alone, or largest gain restored alone), and the proxies' Spearman correlations.
std::string top_units(const profile::Result& r, const profile::Options& po,
                      const nlohmann::json& j) {
  std::vector<size_t> order(r.units.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const bool restore = po.mode == profile::Mode::RESTORE_ONE;
  auto key = [&](size_t i) {
    return restore ? r.baseline.mean - r.units[i].kl.mean : r.units[i].kl.mean;
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) > key(b); });
  std::string table = fmt::format("baseline KL (all {}): {:.6f} ± {:.6f}\n{:<36} {:>12} {:>10}\n",
                                  po.base.name(), r.baseline.mean, r.baseline.stderr_, "unit",
                                  restore ? "KL gain" : "KL", "stderr");
  for (size_t k = 0; k < std::min<size_t>(order.size(), 10); ++k) {
    const auto& u = r.units[order[k]];
    table += fmt::format("{:<36} {:>12.6f} {:>10.6f}\n", u.unit.id, key(order[k]), u.kl.stderr_);
  }
  if (po.proxies && !po.shard.whole()) table += "Spearman correlations: after --merge\n";
  if (po.proxies && po.shard.whole()) {
    const nlohmann::json& sp = j["proxies"]["spearman"];
    auto corr = [&](const char* k) {
      return sp[k].is_null() ? std::string("n/a") : fmt::format("{:+.3f}", sp[k].get<double>());
    };
    table += fmt::format(
        "Spearman with {} over {} units: weight_mse {}, weight_sqnr_db {} (less error: expected "
        "< 0), output_rel_error {}, fisher {}\n",
        restore ? "KL gain" : "KL", r.units.size(), corr("weight_mse"), corr("weight_sqnr_db"),
        corr("output_rel_error"), corr("fisher"));
  }
  return table;
}

// `kldq profile --merge`: the shards read and checked, then one profile written.
Printed merge_profile_cmd(const ProfileCliOptions& o) {
  if (!o.model.empty() || !o.base.empty() || !o.shard.empty() || !o.gpus.empty() || o.proxies ||
      o.naive || !o.method.calib.empty() || !o.method.method.empty())
    throw ConfigError(
        "profile --merge: give only the shard files, -o and --csv (the shards say "
        "what was profiled)");
  std::vector<std::filesystem::path> inputs(o.merge.begin(), o.merge.end());
  const std::filesystem::path out = file_output(o.out, "-o", inputs);
  const std::filesystem::path csv =
      o.csv.empty() ? std::filesystem::path() : file_output(o.csv, "--csv", inputs);
  if (csv == out) throw ConfigError(fmt::format("--csv {}: the same file as -o", o.csv));
  const std::vector<ShardFile> shards = read_shard_files(o.merge);
  const nlohmann::json j = profile::merge_shards(shards);
  write_profile(out, csv, j);
  return {fmt::format("merged {} shards ({} units) -> {}\n", shards.size(), j["units"].size(),
                      out.string()),
          ""};
}

}  // namespace

Printed run_profile_cmd(const ProfileCliOptions& o) {
  if (!o.merge.empty()) return merge_profile_cmd(o);
  if (o.model.empty() || o.base.empty() || o.method.calib.empty())
    throw ConfigError("profile: MODEL, --base and --calib are required (or --merge SHARD.json...)");
  const auto t0 = std::chrono::steady_clock::now();
  profile::Options po = options_of(o);
  const quant::MethodOptions method = method_options(o.method, "");
  const std::vector<std::filesystem::path> inputs = {o.model, o.method.calib};
  const std::filesystem::path out = file_output(o.out, "-o", inputs);
  const std::filesystem::path csv =
      o.csv.empty() ? std::filesystem::path() : file_output(o.csv, "--csv", inputs);
  if (csv == out) throw ConfigError(fmt::format("--csv {}: the same file as -o", o.csv));
  const std::vector<RunContext> contexts = contexts_from(o.compute, o.gpus);
  const RunContext& ctx = contexts[0];
  // The profile's windows serve its method too: the profile needs them whatever the method.
  const calib::Calibration cal = *method_calibration(o.method, "gptq", o.model);
  const model::MemoryNeeds needs = profile_needs(o.model, po, method, cal, ctx);
  // One copy of the model per device, each within that device's budget.
  std::vector<std::unique_ptr<model::Decoder>> copies;
  std::vector<model::Decoder*> models;
  std::vector<model::MemoryPlan> residency;
  for (const RunContext& c : contexts) {
    residency.push_back(plan_residency(c, o.compute, needs, "--batch, --samples or --seq-len"));
    po.caches_on_host = po.caches_on_host || residency.back().caches_on_host;
    copies.push_back(std::make_unique<model::Decoder>(
        model::Decoder::load(o.model, c.device, c.dtype, residency.back().streamed)));
    models.push_back(copies.back().get());
    reset_peak_allocated_bytes(c.device);
  }
  model::Decoder& m = *models[0];
  log::info("profile {}: {} {} units, {}/{}, {} x {} calibration tokens of {}{}", o.model, o.mode,
            o.granularity, method.method, po.base.name(), cal.ids.size(0), cal.ids.size(1),
            cal.identity.value("file", o.method.calib),
            models.size() > 1 ? fmt::format(", on {} GPUs", models.size()) : "");
  const auto t1 = std::chrono::steady_clock::now();
  model::LayerFormats all;
  for (const auto& id : m.linear_ids()) all[id.name()] = po.base;
  // Quantized once, on the first device; each copy takes the same packed layers.
  const quant::QuantizedLayers quantized = quant::quantize_layers(m, all, method, cal.ids);
  const profile::Result r = profile::run_profile(models, cal.ids, quantized, po);
  uint64_t peak = 0, streamed = 0;
  for (const model::Decoder* d : models) {
    device_synchronize(d->device());
    peak = std::max(peak, peak_allocated_bytes(d->device()));
    streamed += d->streamed_bytes();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  nlohmann::json j = profile::to_json(r, po, method.method);
  // The calibration identity is the profile's own ("calibration"): the method fits on it.
  j["method_settings"] = quant::method_json(method, nlohmann::json());
  j["kldq_version"] = KLDQ_VERSION_STRING;
  j["model"] = o.model;
  j["model_fingerprint"] = io::Checkpoint::open(o.model).fingerprint();
  j["calibration"] = cal.identity;
  j["dtype"] = dtype_name(ctx.dtype);
  j["device"] = ctx.device.str();
  j["device_name"] = device_description(ctx.device);
  j["seconds_profile"] = secs;
  j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  j["peak_cuda_bytes"] = peak;  // the largest of the devices'
  j["peak_host_bytes"] = peak_host_bytes();
  j["residency"] = residency[0].describe(needs);
  j["streamed_bytes"] = streamed;
  if (models.size() > 1) {
    j["devices"] = nlohmann::json::array();
    for (const model::Decoder* d : models) j["devices"].push_back(d->device().str());
  }
  log::debug("profile: {} copied host-to-device for streamed blocks; peak host memory {}",
             model::gib(streamed), model::gib(peak_host_bytes()));
  write_profile(out, csv, j);

  const std::string table = top_units(r, po, j);
  return {fmt::format("profiled {} units{} in {:.1f} s -> {}\n", r.units.size(),
                      po.shard.whole()
                          ? ""
                          : fmt::format(" (shard {} of {} units)", po.shard.name(), r.units_total),
                      secs, out.string()),
          table};
}

void register_profile(CLI::App& app, Action& action) {
  auto opts = std::make_shared<ProfileCliOptions>();
  auto* sub = app.add_subcommand("profile", "per-unit KL sensitivity on a calibration set");
  // Required unless --merge (checked by run_profile_cmd).
  sub->add_option("MODEL", opts->model, "checkpoint directory (unquantized)");
  sub->add_option("--base", opts->base, "format the units are quantized to");
  add_method_options(*sub, opts->method, true);
  sub->add_option("--mode", opts->mode, "quantize-one (default) or restore-one");
  sub->add_option("--granularity", opts->granularity, "linear (default), half-block or block");
  sub->add_option("--batch", opts->batch, "windows per forward (default 8)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--naive", opts->naive, "a full forward per unit (slow; for checking)");
  sub->add_flag("--proxies", opts->proxies,
                "also weight MSE/SQNR, output error and Fisher proxies per unit, and their "
                "Spearman correlation with the KL ranking");
  sub->add_option("--gpus", opts->gpus,
                  "all or device indices such as 0,2,3: one copy of the model per GPU, units "
                  "handed out as GPUs finish them (default: one device, as --device)");
  sub->add_option("--shard", opts->shard,
                  "i/n: only the units with index % n == i (merge the n shards with --merge)");
  sub->add_option("--merge", opts->merge,
                  "shard profiles (--shard) to merge into one profile, instead of profiling");
  sub->add_option("--csv", opts->csv, "the per-unit results also as CSV");
  sub->add_option("-o,--output", opts->out, "profile JSON")->required();
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return print(run_profile_cmd(*opts)); }; });
}

}  // namespace kldq::cli
