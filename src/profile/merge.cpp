// Profile shards merged: checks that they belong together, then one profile in model order.
#include "kldq/profile/merge.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "kldq/core/error.hpp"
#include "kldq/core/shard.hpp"
#include "kldq/profile/proxies.hpp"

namespace kldq::profile {
namespace {

// Keys that differ between shards of one profile: what the run measured about itself (merged
// below) and where it ran. Every other key must be equal in every shard.
const std::set<std::string> kPerRun = {"units",           "shard",           "proxies",
                                       "model",           "device",          "seconds",
                                       "seconds_profile", "peak_cuda_bytes", "peak_host_bytes",
                                       "residency",       "streamed_bytes",  "devices"};

// A unit as kldq profile writes it: an id, its KL and, where the profile has them, the gain and
// the proxies (numbers, or null where not finite).
void check_units(const ShardFile& f) {
  const bool restore = f.json.contains("mode") && f.json["mode"] == "restore-one";
  const bool proxies = f.json.contains("proxies");
  if (proxies && !(f.json["proxies"].is_object() && f.json["proxies"].contains("fisher_batch") &&
                   f.json["proxies"]["fisher_batch"].is_number_integer()))
    throw ConfigError(fmt::format("{}: proxies: expected {{\"fisher_batch\": windows}}", f.path));
  auto number = [](const nlohmann::json& u, const char* k, bool nullable) {
    return u.contains(k) && (u[k].is_number() || (nullable && u[k].is_null()));
  };
  for (size_t i = 0; i < f.json["units"].size(); ++i) {
    const nlohmann::json& u = f.json["units"][i];
    bool ok = u.is_object() && u.contains("id") && u["id"].is_string() &&
              number(u, "kl_mean", false) && (!restore || number(u, "kl_gain", false));
    for (const char* k : {"weight_mse", "weight_sqnr_db", "output_rel_error", "fisher"})
      ok = ok && (!proxies || number(u, k, true));
    if (!ok)
      throw ConfigError(fmt::format("{}: units[{}]: not a unit of kldq profile (id, kl_mean{}{})",
                                    f.path, i, restore ? ", kl_gain" : "",
                                    proxies ? ", proxies" : ""));
  }
}

// Every shard given once, all of one split, and agreeing on what was profiled; its units as a
// profile writes them.
std::vector<const ShardFile*> checked(const std::vector<ShardFile>& files) {
  const std::vector<const ShardFile*> by_index =
      check_shards(files, "profile --merge", "kldq profile --shard i/n", kPerRun);
  const size_t total = shard_field(files[0], "units");
  for (const ShardFile* f : by_index) {
    if (!f->json.contains("units") || !f->json["units"].is_array())
      throw ConfigError(fmt::format("{}: units: expected an array", f->path));
    check_units(*f);
    if (f->json.contains("proxies") != files[0].json.contains("proxies"))
      throw ConfigError(fmt::format("{} and {} disagree on --proxies", files[0].path, f->path));
    const Shard s{shard_field(*f, "index"), shard_field(*f, "count")};
    if (shard_field(*f, "units") != total || f->json["units"].size() != s.size_of(total))
      throw ConfigError(fmt::format("{}: shard {} holds {} units; {} of a profile of {} expected",
                                    f->path, s.name(), f->json["units"].size(), s.size_of(total),
                                    total));
  }
  return by_index;
}

// A unit's proxies as profile.json holds them. null (not finite) is read as NaN: spearman gives
// no correlation for any value not finite, +inf (an error-free unit's SQNR) or NaN alike.
ProxyStats proxies_of(const nlohmann::json& u) {
  auto get = [&](const char* k) {
    return u.at(k).is_null() ? std::numeric_limits<double>::quiet_NaN() : u.at(k).get<double>();
  };
  return {get("weight_mse"), get("weight_sqnr_db"), get("output_rel_error"), get("fisher")};
}

}  // namespace

nlohmann::json merge_shards(const std::vector<ShardFile>& files) {
  const std::vector<const ShardFile*> shards = checked(files);
  const size_t n = shards.size(), total = shard_field(files[0], "units");
  nlohmann::json out = shards[0]->json;
  out.erase("shard");
  out.erase("devices");  // the first shard's GPUs; the others' may differ
  out["units"] = nlohmann::json::array();
  std::set<std::string> ids;
  for (size_t k = 0; k < total; ++k) {
    const nlohmann::json& u = shards[k % n]->json["units"][k / n];
    if (!ids.insert(u["id"].get<std::string>()).second)
      throw ConfigError(fmt::format("{}: unit {} appears in two shards", shards[k % n]->path,
                                    u["id"].get<std::string>()));
    out["units"].push_back(u);
  }
  add_run_figures(shards, out);
  out["seconds_profile"] = summed_figure(shards, "seconds_profile");
  if (out.contains("proxies")) {  // the correlations, over every unit
    const bool restore = out.contains("mode") && out["mode"] == "restore-one";
    std::vector<ProxyStats> p;
    std::vector<double> sensitivity;
    for (const nlohmann::json& u : out["units"]) {
      p.push_back(proxies_of(u));
      sensitivity.push_back(u.at(restore ? "kl_gain" : "kl_mean").get<double>());
    }
    out["proxies"] = proxies_json(p, sensitivity, restore ? "kl_gain" : "kl_mean",
                                  out["proxies"]["fisher_batch"].get<int64_t>());
  }
  return out;
}

}  // namespace kldq::profile
