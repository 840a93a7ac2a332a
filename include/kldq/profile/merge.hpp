// Profile shards (`kldq profile --shard i/n`) merged into the profile one run would have written
// (`kldq profile --merge`): the units interleaved back into model order, the proxies' correlations
// computed over all of them, run times summed and peaks taken as maxima.
#pragma once

#include <string>
#include <vector>

#include "kldq/core/shard.hpp"
#include "kldq/profile/record.hpp"

namespace kldq::profile {

using kldq::ShardFile;  // a shard's profile.json (a ProfileRecord with a shard)

// The merged profile. ConfigError naming the files, before anything is merged, when a file is not
// a shard, two files are the same shard, a shard is missing, the shards were split differently,
// or they disagree on what was profiled: checkpoint fingerprint, calibration, base, method and its
// settings, mode, granularity, dtype, device type, kldq version, and the fully quantized model's
// KL (every shard computes it; a difference means the runs were not deterministic); or when a
// shard is not a profile as kldq writes it (profile_from_json's errors, naming the key path).
ProfileRecord merge_shards(const std::vector<ShardFile>& shards);

}  // namespace kldq::profile
