// Profile shards merged: checks that they belong together, then one profile in model order.
#include "kldq/profile/merge.hpp"

#include <fmt/format.h>

#include <set>

#include "kldq/core/error.hpp"
#include "kldq/core/shard.hpp"
#include "kldq/io/document.hpp"

namespace kldq::profile {
namespace {

// Keys that differ between shards of one profile: what the run measured about itself (merged
// below) and where it ran. Every other key must be equal in every shard.
const std::set<std::string> kPerRun = {"units",           "shard",           "proxies",
                                       "model",           "device",          "seconds",
                                       "seconds_profile", "peak_cuda_bytes", "peak_host_bytes",
                                       "residency",       "streamed_bytes",  "devices"};

// Every shard given once, all of one split, and agreeing on what was profiled; each read as a
// profile (its units as a profile writes them), in shard order.
std::vector<ProfileRecord> checked(const std::vector<ShardFile>& files,
                                   std::vector<const ShardFile*>& by_index) {
  by_index = check_shards(files, "profile --merge", "kldq profile --shard i/n", kPerRun);
  std::vector<ProfileRecord> records;
  for (const ShardFile* f : by_index) {
    records.push_back(profile_from_json(io::Doc(f->json, f->path, io::DocKind::CONFIG)));
    const ProfileRecord& r = records.back();
    if (r.proxies.has_value() != records[0].proxies.has_value())
      throw ConfigError(fmt::format("{} and {} disagree on --proxies", files[0].path, f->path));
    const Shard s{r.shard->index, r.shard->count};
    const size_t total = records[0].shard->units;
    if (r.shard->units != total || r.units.size() != s.size_of(total))
      throw ConfigError(fmt::format("{}: shard {} holds {} units; {} of a profile of {} expected",
                                    f->path, s.name(), r.units.size(), s.size_of(total), total));
  }
  return records;
}

// The correlations of the merged units' proxies with their sensitivity.
ProxySummary merged_proxies(const ProfileRecord& r) {
  const bool restore = r.mode == Mode::RESTORE_ONE;
  std::vector<ProxyStats> p;
  std::vector<double> sensitivity;
  for (const UnitRecord& u : r.units) {
    p.push_back(*u.proxies);
    sensitivity.push_back(restore ? *u.kl_gain : u.kl_mean);
  }
  return proxy_summary(p, sensitivity, restore ? "kl_gain" : "kl_mean", r.proxies->fisher_batch);
}

}  // namespace

ProfileRecord merge_shards(const std::vector<ShardFile>& files) {
  std::vector<const ShardFile*> shards;
  const std::vector<ProfileRecord> records = checked(files, shards);
  const size_t n = records.size(), total = records[0].shard->units;
  ProfileRecord out = records[0];
  out.shard.reset();
  out.figures.devices.reset();  // the first shard's GPUs; the others' may differ
  out.units.clear();
  std::set<std::string> ids;
  for (size_t k = 0; k < total; ++k) {
    const UnitRecord& u = records[k % n].units[k / n];
    if (!ids.insert(u.id).second)
      throw ConfigError(
          fmt::format("{}: unit {} appears in two shards", shards[k % n]->path, u.id));
    out.units.push_back(u);
  }
  const MergedFigures f = merged_figures(shards);
  out.figures.seconds = f.seconds;
  out.figures.seconds_profile = summed_figure(shards, "seconds_profile");
  out.figures.streamed_bytes = f.streamed_bytes;
  out.figures.peak_cuda_bytes = f.peak_cuda_bytes;
  out.figures.peak_host_bytes = f.peak_host_bytes;
  out.figures.shards = f.shards;
  if (out.proxies) out.proxies = merged_proxies(out);  // the correlations, over every unit
  return out;
}

}  // namespace kldq::profile
