// `kldq profile MODEL --base FORMAT [--method rtn|hqq|gptq|awq] --calib FILE [--samples N]
// [--seq-len T] [--seed S] [--mode quantize-one|restore-one]
// [--granularity linear|half-block|block] [--batch B] [--naive] [--proxies] [--shard i/n]
// [--csv FILE] -o profile.json`: per-unit KL sensitivity and optionally its proxies
// (docs/PROTOCOLS.md, "Sensitivity profile"); the units also as CSV.
// `kldq profile --merge SHARD.json... [--csv FILE] -o profile.json`: shards merged into one.
#include "common.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/profile/task.hpp"

namespace kldq::cli {

namespace {

// The request, with --mode and --granularity as typed: parsed through the vocabularies when the
// command runs, so a bad value is kldq's ConfigError naming the option (exit 2).
struct ProfileCommand {
  profile::ProfileRequest request;
  std::string mode = profile::kModes.name(request.mode);
  std::string granularity = profile::kGranularities.name(request.granularity);
};

}  // namespace

void register_profile(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<ProfileCommand>();
  profile::ProfileRequest* opts = &cmd->request;
  auto* sub = app.add_subcommand("profile", "per-unit KL sensitivity on a calibration set");
  // Required unless --merge (checked by profile::profile_checkpoint).
  sub->add_option("MODEL", opts->model, "checkpoint directory (unquantized)");
  sub->add_option("--base", opts->base, "format the units are quantized to");
  add_method_options(*sub, opts->method, true);
  sub->add_option("--mode", cmd->mode, profile::kModes.names())->capture_default_str();
  sub->add_option("--granularity", cmd->granularity, profile::kGranularities.names())
      ->capture_default_str();
  sub->add_option("--batch", opts->batch, "windows per forward")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_flag("--naive", opts->naive, "a full forward per unit (slow; for checking)");
  sub->add_flag("--proxies", opts->proxies,
                "also weight MSE/SQNR, output error and Fisher proxies per unit, and their "
                "Spearman correlation with the KL ranking");
  sub->add_option("--gpus", opts->gpus,
                  "all or device indices such as 0,2,3: one copy of the model per GPU, units "
                  "handed out as GPUs finish them (default: one device, as --device)");
  sub->add_option("--shard", opts->shard,
                  "i/n: only the units with index % n == i (merge the n shards with --merge)");
  sub->add_option("--merge", opts->merge,
                  "shard profiles (--shard) to merge into one profile, instead of profiling");
  sub->add_option("--csv", opts->csv, "the per-unit results also as CSV");
  sub->add_option("-o,--output", opts->out, "profile JSON")->required();
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, cmd] {
    action = [cmd] {
      cmd->request.mode = profile::kModes.parse(cmd->mode, "--mode");
      cmd->request.granularity = profile::kGranularities.parse(cmd->granularity, "--granularity");
      const profile::ProfileReport r = profile::profile_checkpoint(cmd->request);
      return print(r.summary, r.table);
    };
  });
}

}  // namespace kldq::cli
