// The options and entry points of the subcommands that `kldq run` composes into an experiment
// (profile, plan, eval): each runs exactly as its command line would, so a stage of a run and
// the command a user types give the same artifact.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "kldq/experiment/config.hpp"
#include "kldq/plan/planner.hpp"

namespace kldq::cli {

// What a command prints: `out` on stdout (its result line), `err` on stderr (a table beside it).
// The commands return it, so `kldq run` calls them without printing and logs it with -v.
struct Printed {
  std::string out, err;
};
// Prints `p` and returns exit status 0.
int print(const Printed& p);

struct ProfileCliOptions {
  std::string model, base, mode = "quantize-one", granularity = "linear";
  std::string out, csv, shard, gpus;
  std::vector<std::string> merge;  // shard profiles to merge instead of profiling
  int64_t batch = 8;
  bool naive = false, proxies = false;
  MethodCliOptions method;  // the base's method; its calibration is the profile's
  ComputeOptions compute;
};
// `kldq profile`: writes `out` (and `csv`), prints the top units on stderr.
Printed run_profile_cmd(const ProfileCliOptions& o);

struct QuantizeCliOptions {
  std::string model, out, base, plan;
  std::vector<std::string> keep;
  bool force = false;
  MethodCliOptions method;
  ComputeOptions compute;
};
// The plan `o` names (--plan, or --base with --keep and --group), its method set from --method.
quant::Plan plan_from(const QuantizeCliOptions& o);
// `kldq quantize`: writes the checkpoint `o.out`.
Printed run_quantize_cmd(const QuantizeCliOptions& o);

struct ExportCliOptions {
  QuantizeCliOptions source;  // MODEL, and --plan/--base to quantize it first; out, force
  std::string to;             // compressed-tensors | gguf
};
// `kldq export`: writes `source.out` (a directory for compressed-tensors, a file for gguf).
Printed run_export_cmd(const ExportCliOptions& o);

struct PlanCliOptions {
  std::vector<std::string> profiles, candidates;
  std::string restore_top, random, by, out;
  double budget_bpw = std::nan("");  // NaN: not given
  bool uniform = false;
  bool fused_groups = false;  // plan q/k/v and gate/up of a block together
  int64_t seed = -1;
};
// `kldq plan`: writes `out` (stdout when empty).
int run_plan(const PlanCliOptions& o);

struct EvalCliOptions {
  std::string model, reference, base, plan, ppl, ppl_protocol = "gptq", out;
  std::string mmlu, mmlu_protocol = "5shot", predictions, reference_predictions;
  std::string tasks, tasks_dir, task_predictions, reference_task_predictions;
  std::string shard;               // "i/n" (eval/merge.hpp)
  std::vector<std::string> merge;  // shard metrics to merge instead of evaluating
  int64_t ctx = 0, stride = 0, batch = 8, mmlu_limit = 0,
          tasks_limit = 0;  // batch: as an experiment's eval
  int shots = -1;
  bool kld = false;
  bool speed = false;          // prefill and decode tokens/s (eval_speed.hpp)
  bool mmlu_unshared = false;  // every MMLU prompt run whole (benchmarks of the shared prefix)
  MethodCliOptions method;     // quantization in memory (--base, --plan): method and calibration
  ComputeOptions compute;
};
// `kldq eval`: writes `out` (metrics JSON) and the MMLU and task predictions beside it.
Printed run_eval(const EvalCliOptions& o);

struct RunCliOptions {
  std::string experiment, shard_arg, output, gpus;
  Shard shard;  // from shard_arg
  std::vector<std::string> models;
  bool dry_run = false;
  ComputeOptions compute;
};
// The profiles `kldq plan` reads: each file's JSON, checked (plan::Profile::from_json).
std::vector<plan::Profile> read_profiles(const std::vector<std::string>& paths);
// The line `kldq plan` prints on stderr about `plan`, made from `profiles`, written to `out`.
std::string plan_line(const quant::Plan& plan, const std::vector<plan::Profile>& profiles,
                      const std::string& out);

// `kldq run` without --dry-run: runs the stages of `points` of `e` (models already resolved),
// reusing finished ones, and prints the summary table.
int run_experiment(const experiment::Experiment& e, const RunCliOptions& o,
                   const std::vector<size_t>& points);

}  // namespace kldq::cli
