// `kldq plan PROFILE... (--restore-top P% [--by count|params] | --budget-bpw B
// [--candidates F,...] | --uniform | --random P% [--by ...] --seed S) [-o plan.json]`: a
// mixed-precision plan from sensitivity profiles (docs/PROTOCOLS.md, "Plans").
#include <fmt/format.h>

#include <cmath>
#include <iostream>

#include "common.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/plan/planner.hpp"

namespace kldq::cli {
namespace {

struct PlanCliOptions {
  std::vector<std::string> profiles, candidates;
  std::string restore_top, random, by, out;
  double budget_bpw = std::nan("");  // NaN: not given
  bool uniform = false;
  bool fused_groups = false;  // plan q/k/v and gate/up of a block together
  int64_t seed = -1;
};

plan::Request request_from(const PlanCliOptions& o) {
  const int given =
      !o.restore_top.empty() + !std::isnan(o.budget_bpw) + o.uniform + !o.random.empty();
  if (given != 1)
    throw ConfigError(
        "plan: give exactly one of --restore-top, --budget-bpw, --uniform and --random");
  plan::Request r;
  if (!o.restore_top.empty()) {
    r.strategy = plan::Strategy::RESTORE_TOP;
    r.percent = plan::parse_percent(o.restore_top, "--restore-top");
  } else if (!o.random.empty()) {
    r.strategy = plan::Strategy::RANDOM;
    r.percent = plan::parse_percent(o.random, "--random");
    if (o.seed < 0) throw ConfigError("--random: needs --seed (the plan is named by its seed)");
    r.seed = static_cast<uint64_t>(o.seed);
  } else if (!std::isnan(o.budget_bpw)) {
    r.strategy = plan::Strategy::BUDGET;
    r.budget_bpw = o.budget_bpw;
    r.candidates = o.candidates;
  }
  const bool restoring =
      r.strategy == plan::Strategy::RESTORE_TOP || r.strategy == plan::Strategy::RANDOM;
  if (!o.by.empty() && !restoring) throw ConfigError("--by: only with --restore-top or --random");
  if (!o.by.empty()) r.by = plan::parse_by(o.by, "--by");
  if (!o.candidates.empty() && r.strategy != plan::Strategy::BUDGET)
    throw ConfigError("--candidates: only with --budget-bpw");
  if (o.seed >= 0 && r.strategy != plan::Strategy::RANDOM)
    throw ConfigError("--seed: only with --random");
  r.fused_groups = o.fused_groups;
  return r;
}

int run_plan(const PlanCliOptions& o) {
  const plan::Request r = request_from(o);
  const std::filesystem::path out =
      o.out.empty() ? std::filesystem::path()
                    : file_output(o.out, "-o", {o.profiles.begin(), o.profiles.end()});
  const std::vector<plan::Profile> profiles = plan::read_profiles(o.profiles);
  const quant::Plan plan = plan::make_plan(profiles, r);
  const std::string text = plan.to_json().dump(2) + "\n";
  if (out.empty())
    std::cout << text;
  else
    io::write_file_atomic(out, text);

  std::cerr << plan::plan_line(plan, profiles, out.string());
  return 0;
}

}  // namespace

void register_plan(CLI::App& app, Action& action) {
  auto opts = std::make_shared<PlanCliOptions>();
  auto* sub = app.add_subcommand("plan", "mixed-precision plan from sensitivity profiles");
  sub->add_option("PROFILE", opts->profiles,
                  "profile.json of kldq profile (several, one per base format, for --budget-bpw; "
                  "the first is the anchor)")
      ->required();
  auto* top = sub->add_option("--restore-top", opts->restore_top,
                              "restore the most sensitive P% of units to bf16");
  sub->add_option("--by", opts->by,
                  "count (default: P% of the units) or params (P% of the parameters)");
  auto* budget =
      sub->add_option("--budget-bpw", opts->budget_bpw,
                      "least summed KL at this average bits per weight of the linear layers")
          ->excludes(top);
  sub->add_option("--candidates", opts->candidates,
                  "formats the budget may use, comma-separated (default: every profiled base "
                  "and bf16)")
      ->delimiter(',');
  auto* uniform =
      sub->add_flag("--uniform", opts->uniform, "every unit at the profile's base format")
          ->excludes(top)
          ->excludes(budget);
  sub->add_option("--random", opts->random, "restore a random P% of units (baseline)")
      ->excludes(top)
      ->excludes(budget)
      ->excludes(uniform);
  sub->add_option("--seed", opts->seed, "seed of --random")->check(CLI::NonNegativeNumber);
  sub->add_flag("--fused-groups", opts->fused_groups,
                "decide each block's q/k/v and gate/up layers together (one format per group, as "
                "vLLM's fused modules need; kldq export --to compressed-tensors requires it)");
  sub->add_option("-o,--output", opts->out, "plan JSON (default: stdout)");
  sub->callback([&action, opts] { action = [opts] { return run_plan(*opts); }; });
}

}  // namespace kldq::cli
