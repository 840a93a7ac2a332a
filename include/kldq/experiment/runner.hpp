// The experiment runner behind `kldq run`: the stages of a sweep's points (reference, profiles,
// plans, evaluations, exports) run in order through the library tasks their commands call, each
// artifact stored under its key, finished stages and points reused, records appended to
// runs.jsonl and summary.csv (docs/EXPERIMENTS.md, "Running").
#pragma once

#include <string>
#include <vector>

#include "kldq/core/shard.hpp"
#include "kldq/experiment/config.hpp"
#include "kldq/model/compute.hpp"

namespace kldq::experiment {

struct RunOptions {
  Shard shard;                    // --shard i/n: which sweep points this process runs
  std::string gpus;               // --gpus: profiles on these GPUs, other stages on the first
  model::ComputeOptions compute;  // device, dtype, threads and memory budget of every stage
};

// Runs the stages of `points` of `e` (models already resolved), reusing finished ones; returns
// the summary table of every recorded point and the line naming the results directory.
std::string run_experiment(const Experiment& e, const RunOptions& o,
                           const std::vector<size_t>& points);

}  // namespace kldq::experiment
