// The profile task (profile/task.hpp): options resolved and outputs checked before any work,
// the residency planned per device, the base quantized once and its units' passes run, then
// profile.json with its identity (model fingerprint, calibration, method settings) and figures.
#include "kldq/profile/task.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <set>

#include "kldq/build_config.hpp"
#include "kldq/calib/calibration.hpp"
#include "kldq/core/clock.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/core/shard.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/csv.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/profile/merge.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/profile/record.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::profile {
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
Options options_of(const ProfileRequest& o) {
  Options po;
  po.mode = o.mode;
  po.granularity = o.granularity;
  po.base = quant::base_format(o.base, o.method.group, "--base");
  po.batch = o.batch;
  po.cached = !o.naive;
  po.proxies = o.proxies;
  po.shard = parse_shard(o.shard, "--shard", "units");
  return po;
}

// Device bytes of the profile: the model's weights, the passes' working set and, for a calibrated
// method, its quantization's, which comes first.
model::MemoryNeeds profile_needs(const std::string& model, const Options& po,
                                 const quant::MethodOptions& method, const calib::Calibration& cal,
                                 const RunContext& ctx) {
  const model::ModelConfig config =
      model::load_config(std::filesystem::path(model) / "config.json");
  model::MemoryNeeds needs = memory_needs(model::Decoder::weight_needs(model, ctx.dtype), config,
                                          po, cal.ids.size(0), cal.ids.size(1), ctx.dtype);
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
                   const ProfileRecord& record) {
  const nlohmann::json j = to_json(record);
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
std::string top_units(const Result& r, const Options& po, const ProfileRecord& record) {
  std::vector<size_t> order(r.units.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const bool restore = po.mode == Mode::RESTORE_ONE;
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
    const ProxyCorrelations& sp = record.proxies.value().spearman.value();
    auto corr = [](const std::optional<double>& c) {
      return c ? fmt::format("{:+.3f}", *c) : std::string("n/a");
    };
    table += fmt::format(
        "Spearman with {} over {} units: weight_mse {}, weight_sqnr_db {} (less error: expected "
        "< 0), output_rel_error {}, fisher {}\n",
        restore ? "KL gain" : "KL", r.units.size(), corr(sp.weight_mse), corr(sp.weight_sqnr_db),
        corr(sp.output_rel_error), corr(sp.fisher));
  }
  return table;
}

// `kldq profile --merge`: the shards read and checked, then one profile written.
ProfileReport merge_profile_files(const ProfileRequest& o) {
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
  const std::vector<ShardFile> shards = io::read_shard_files(o.merge);
  const ProfileRecord merged = merge_shards(shards);
  write_profile(out, csv, merged);
  return {fmt::format("merged {} shards ({} units) -> {}\n", shards.size(), merged.units.size(),
                      out.string()),
          ""};
}

// One copy of the model per device, each within that device's budget; caches go to the host
// when any device's plan puts them there.
struct Copies {
  std::vector<std::unique_ptr<model::Decoder>> owned;
  std::vector<model::Decoder*> models;
  std::vector<model::MemoryPlan> residency;
};
Copies load_copies(const ProfileRequest& o, const std::vector<RunContext>& contexts,
                   const model::MemoryNeeds& needs, Options& po) {
  Copies c;
  for (const RunContext& ctx : contexts) {
    c.residency.push_back(
        model::plan_residency(ctx, o.compute, needs, "--batch, --samples or --seq-len"));
    po.caches_on_host = po.caches_on_host || c.residency.back().caches_on_host;
    c.owned.push_back(std::make_unique<model::Decoder>(
        model::Decoder::load(o.model, ctx.device, ctx.dtype, c.residency.back().streamed)));
    c.models.push_back(c.owned.back().get());
    reset_peak_allocated_bytes(ctx.device);
  }
  return c;
}

// profile.json's units and summary with the profile's identity: version, model and fingerprint,
// calibration, method settings, device.
ProfileRecord profile_record(const Result& r, const Options& po, const quant::MethodOptions& method,
                             const std::string& model, const calib::Calibration& cal,
                             const RunContext& ctx) {
  ProfileRecord rec = record_of(r, po, method.method);
  // The calibration identity is the profile's own ("calibration"): the method fits on it.
  rec.method_settings = quant::method_json(method, std::nullopt);
  rec.kldq_version = KLDQ_VERSION_STRING;
  rec.model = model;
  rec.model_fingerprint = io::Checkpoint::open(model).fingerprint();
  rec.calibration = cal.identity;
  rec.dtype = dtype_name(ctx.dtype);
  rec.device = ctx.device.str();
  rec.device_name = device_description(ctx.device);
  return rec;
}

// The run's memory and streaming figures over every device (synchronized).
void add_run_figures(ProfileFigures& f, const std::vector<model::Decoder*>& models,
                     const std::string& residency) {
  uint64_t peak = 0, streamed = 0;
  for (const model::Decoder* d : models) {
    peak = std::max(peak, peak_allocated_bytes(d->device()));
    streamed += d->streamed_bytes();
  }
  f.peak_cuda_bytes = peak;  // the largest of the devices'
  f.peak_host_bytes = peak_host_bytes();
  f.residency = residency;
  f.streamed_bytes = streamed;
  if (models.size() > 1) {
    f.devices.emplace();
    for (const model::Decoder* d : models) f.devices->push_back(d->device().str());
  }
  log::debug("profile: {} copied host-to-device for streamed blocks; peak host memory {}",
             model::gib(streamed), model::gib(peak_host_bytes()));
}

}  // namespace

ProfileReport profile_checkpoint(const ProfileRequest& o) {
  if (!o.merge.empty()) return merge_profile_files(o);
  if (o.model.empty() || o.base.empty() || o.method.calib.empty())
    throw ConfigError("profile: MODEL, --base and --calib are required (or --merge SHARD.json...)");
  const auto t0 = Clock::now();
  Options po = options_of(o);
  const quant::MethodOptions method = quant::resolve_method(o.method, std::nullopt);
  const std::vector<std::filesystem::path> inputs = {o.model, o.method.calib};
  const std::filesystem::path out = file_output(o.out, "-o", inputs);
  const std::filesystem::path csv =
      o.csv.empty() ? std::filesystem::path() : file_output(o.csv, "--csv", inputs);
  if (csv == out) throw ConfigError(fmt::format("--csv {}: the same file as -o", o.csv));
  const std::vector<RunContext> contexts = model::contexts_from(o.compute, o.gpus);
  const RunContext& ctx = contexts[0];
  // The profile's windows serve its method too: the profile needs them whatever the method.
  const calib::Calibration cal =
      *quant::resolve_calibration(o.method, quant::Method::GPTQ, o.model);
  const model::MemoryNeeds needs = profile_needs(o.model, po, method, cal, ctx);
  Copies copies = load_copies(o, contexts, needs, po);
  const std::vector<model::Decoder*>& models = copies.models;
  const std::vector<model::MemoryPlan>& residency = copies.residency;
  model::Decoder& m = *models[0];
  log::info("profile {}: {} {} units, {}/{}, {} x {} calibration tokens of {}{}", o.model,
            mode_name(po.mode), granularity_name(po.granularity), quant::method_name(method.method),
            po.base.name(), cal.ids.size(0), cal.ids.size(1), cal.identity.file,
            models.size() > 1 ? fmt::format(", on {} GPUs", models.size()) : "");
  const auto t1 = Clock::now();
  model::LayerFormats all;
  for (const auto& id : m.linear_ids()) all[id.name()] = po.base;
  // Quantized once, on the first device; each copy takes the same packed layers.
  const quant::QuantizedLayers quantized = quant::quantize_layers(m, all, method, cal.ids);
  const Result r = run_profile(models, cal.ids, quantized, po);
  for (const model::Decoder* d : models) device_synchronize(d->device());  // the work is timed
  const double secs = seconds_since(t1);
  ProfileRecord rec = profile_record(r, po, method, o.model, cal, ctx);
  rec.figures.seconds_profile = secs;
  add_run_figures(rec.figures, models, residency[0].describe(needs));
  rec.figures.seconds = seconds_since(t0);
  write_profile(out, csv, rec);

  const std::string table = top_units(r, po, rec);
  return {fmt::format("profiled {} units{} in {:.1f} s -> {}\n", r.units.size(),
                      po.shard.whole()
                          ? ""
                          : fmt::format(" (shard {} of {} units)", po.shard.name(), r.units_total),
                      secs, out.string()),
          table};
}

}  // namespace kldq::profile
