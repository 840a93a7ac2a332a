// `kldq run EXPERIMENT [--model PATH]... [-o DIR] [--shard i/n] [--dry-run]`: an experiment
// file's stages, run with caching and resume (experiment::run_experiment), or with --dry-run the
// resolved sweep and the stages that would run or be reused (docs/EXPERIMENTS.md).
#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "common.hpp"
#include "kldq/core/error.hpp"
#include "kldq/experiment/config.hpp"
#include "kldq/experiment/results.hpp"
#include "kldq/experiment/runner.hpp"
#include "kldq/io/checkpoint.hpp"

namespace kldq::cli {
namespace {

namespace fs = std::filesystem;

struct RunCliOptions {
  std::string experiment, shard_arg, output, gpus;
  Shard shard;  // from shard_arg
  std::vector<std::string> models;
  bool dry_run = false;
  model::ComputeOptions compute;
};

void dry_run(const experiment::Experiment& e, const RunCliOptions& o,
             const std::vector<size_t>& points) {
  const nlohmann::json compute = model::compute_tag(model::context_from(o.compute));
  std::cout << fmt::format(
      "experiment {} ({}): {} sweep points{}, output {} ({} {})\n", e.name, o.experiment,
      e.points.size(),
      o.shard.whole() ? "" : fmt::format(", shard {}: {}", o.shard.name(), points.size()), e.output,
      compute["device"].get<std::string>(), compute["dtype"].get<std::string>());
  for (size_t i : points)
    std::cout << fmt::format("  point {:>3}  {}\n", i, experiment::point_label(e.points[i]));
  for (const std::string& model : e.models) {
    std::error_code ec;
    const bool present = fs::is_regular_file(fs::path(model) / "config.json", ec);
    // A missing checkpoint is fine for a dry run (shipped configs name placeholders); its
    // stages are keyed by its path until it exists.
    const std::string id = present ? io::Checkpoint::open(model).fingerprint() : "missing:" + model;
    std::cout << fmt::format("model {}{}\n", model,
                             present ? "" : " (not found: keys use its path)");
    for (const auto& s : experiment::plan_stages(e, model, id, points, compute)) {
      const bool done = fs::is_regular_file(
          fs::path(e.output) / experiment::stage_dir(s) / experiment::stage_artifact(s), ec);
      std::cout << fmt::format("  {:<9}  {}  {:<6}  {}\n", s.kind, s.key, done ? "reuse" : "run",
                               experiment::stage_label(s, e));
    }
  }
}

int run_run(const RunCliOptions& given) {
  experiment::Experiment e = experiment::load_experiment(given.experiment);
  // The file's budget unless the command line gives one; results do not depend on it (streamed
  // blocks compute bit-identically), so it is not part of any stage key.
  RunCliOptions o = given;
  if (o.compute.max_gpu_memory.empty()) o.compute.max_gpu_memory = e.max_gpu_memory;
  if (!o.models.empty()) e.models = o.models;
  if (!o.output.empty()) e.output = o.output;
  o.shard = parse_shard(o.shard_arg, "--shard", "sweep points");
  if (e.models.empty())
    throw ConfigError(fmt::format("{}: models: missing (or give --model PATH)", o.experiment));
  const std::vector<size_t> points = experiment::shard_points(e, o.shard);
  if (o.dry_run) {
    dry_run(e, o, points);
    return 0;
  }
  std::cout << experiment::run_experiment(e, {o.shard, o.gpus, o.compute}, points);
  return 0;
}

}  // namespace

void register_run(CLI::App& app, Action& action) {
  auto opts = std::make_shared<RunCliOptions>();
  auto* sub = app.add_subcommand("run", "run an experiment file: every stage, cached, resumable");
  sub->add_option("EXPERIMENT", opts->experiment, "experiment file, YAML or JSON")->required();
  sub->add_option("--model", opts->models, "checkpoint(s) replacing the file's models");
  sub->add_option("--shard", opts->shard_arg, "i/n: only sweep points with index % n == i");
  sub->add_option("-o,--output", opts->output, "results directory replacing the file's output");
  sub->add_option("--gpus", opts->gpus,
                  "all or device indices such as 0,2,3: profiles on those GPUs (kldq profile "
                  "--gpus), the other stages on the first");
  sub->add_flag("--dry-run", opts->dry_run, "print the resolved sweep and the stages");
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return run_run(*opts); }; });
}

}  // namespace kldq::cli
