// `kldq profile` as a library task: per-unit KL sensitivity of a checkpoint on calibration
// windows (docs/PROTOCOLS.md, "Sensitivity profile"), on one device or one model copy per GPU of
// `gpus`, written as profile.json (and CSV); or shard profiles merged into one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kldq/model/compute.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/quant/resolve.hpp"

namespace kldq::profile {

struct ProfileRequest {
  std::string model, base;
  Mode mode = Mode::QUANTIZE_ONE;
  Granularity granularity = Granularity::LINEAR;
  std::string out, csv, shard, gpus;  // -o, --csv, --shard i/n, --gpus
  std::vector<std::string> merge;     // shard profiles to merge instead of profiling
  int64_t batch = 8;
  bool naive = false, proxies = false;
  quant::MethodRequest method;  // the base's method; its calibration is the profile's
  model::ComputeOptions compute;
};
// What the profile command prints: `summary` (its result line) and `table` (the ten most
// sensitive units and the proxies' correlations, on stderr beside it).
struct ProfileReport {
  std::string summary, table;
};
// Profiles `r.model` into `r.out` (and `r.csv`), or merges `r.merge`'s shards when given.
ProfileReport profile_checkpoint(const ProfileRequest& r);

}  // namespace kldq::profile
