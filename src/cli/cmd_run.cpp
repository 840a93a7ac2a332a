// `kldq run EXPERIMENT [--model PATH]... [--shard i/n] --dry-run`: an experiment file's resolved
// sweep and the stages a run needs, with their artifact keys (docs/EXPERIMENTS.md). Running the
// stages is not built yet (issue 7): without --dry-run the command says so.
#include <fmt/format.h>

#include <filesystem>
#include <iostream>

#include "common.hpp"
#include "kldq/core/error.hpp"
#include "kldq/experiment/config.hpp"
#include "kldq/io/checkpoint.hpp"

namespace kldq::cli {
namespace {

struct RunOptions {
  std::string experiment, shard;
  std::vector<std::string> models;
  bool dry_run = false;
};

std::string describe(const experiment::Stage& s, const experiment::Experiment& e) {
  if (s.kind == "profile")
    return fmt::format(
        "{}/{} {} {}", s.inputs["base"].get<std::string>(), s.inputs["method"].get<std::string>(),
        s.inputs["granularity"].get<std::string>(), s.inputs["mode"].get<std::string>());
  if (s.point) return fmt::format("point {}", *s.point);
  return fmt::format("bf16 model{}{}", e.ppl.empty() ? "" : ", ppl",
                     e.mmlu.empty() ? "" : ", mmlu");
}

int run_run(const RunOptions& o) {
  experiment::Experiment e = experiment::load_experiment(o.experiment);
  if (!o.models.empty()) e.models = o.models;
  if (e.models.empty())
    throw ConfigError(fmt::format("{}: models: missing (or give --model PATH)", o.experiment));
  const std::vector<size_t> points = experiment::shard_points(e, o.shard);
  if (!o.dry_run)
    throw ConfigError(
        "kldq run: executing the stages is not built yet (issue 7); --dry-run shows them, and "
        "kldq profile, plan and eval run each one");
  std::cout << fmt::format(
      "experiment {} ({}): {} sweep points{}, output {}\n", e.name, o.experiment, e.points.size(),
      o.shard.empty() ? "" : fmt::format(", shard {}: {}", o.shard, points.size()), e.output);
  for (size_t i : points)
    std::cout << fmt::format("  point {:>3}  {}\n", i, e.points[i].to_json().dump());
  for (const std::string& model : e.models) {
    std::error_code ec;
    const bool present =
        std::filesystem::is_regular_file(std::filesystem::path(model) / "config.json", ec);
    // A missing checkpoint is fine for a dry run (shipped configs name placeholders); its
    // stages are keyed by its path until it exists.
    const std::string id = present ? io::Checkpoint::open(model).fingerprint() : "missing:" + model;
    std::cout << fmt::format("model {}{}\n", model,
                             present ? "" : " (not found: keys use its path)");
    for (const auto& s : experiment::plan_stages(e, model, id, points))
      std::cout << fmt::format("  {:<9}  {}  {}\n", s.kind, s.key, describe(s, e));
  }
  return 0;
}

}  // namespace

void register_run(CLI::App& app, Action& action) {
  auto opts = std::make_shared<RunOptions>();
  auto* sub = app.add_subcommand("run", "run an experiment file (so far: --dry-run)");
  sub->add_option("EXPERIMENT", opts->experiment, "experiment file, YAML or JSON")->required();
  sub->add_option("--model", opts->models, "checkpoint(s) replacing the file's models");
  sub->add_option("--shard", opts->shard, "i/n: only sweep points with index % n == i");
  sub->add_flag("--dry-run", opts->dry_run, "print the resolved sweep and the stages");
  sub->callback([&action, opts] { action = [opts] { return run_run(*opts); }; });
}

}  // namespace kldq::cli
