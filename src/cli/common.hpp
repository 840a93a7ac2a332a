// Shared pieces of the kldq subcommands: registration signature, device/dtype options.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "kldq/core/context.hpp"
#include "kldq/quant/plan.hpp"

namespace kldq::cli {

// A subcommand registers itself on `app` and, when selected, stores what to run in `action`
// (executed by main after parsing, so errors map to exit codes in one place).
using Action = std::function<int()>;

void register_inspect(CLI::App& app, Action& action);
void register_synth(CLI::App& app, Action& action);
void register_logits(CLI::App& app, Action& action);
void register_tokenize(CLI::App& app, Action& action);
void register_quantize(CLI::App& app, Action& action);
void register_eval(CLI::App& app, Action& action);
void register_profile(CLI::App& app, Action& action);
void register_plan(CLI::App& app, Action& action);
void register_run(CLI::App& app, Action& action);
void register_report(CLI::App& app, Action& action);

struct ComputeOptions {
  std::string device;  // "" = cuda when present, else cpu
  std::string dtype;   // "" = bf16 on cuda, fp32 on cpu
  int threads = 0;
  std::string max_gpu_memory;  // "" = no cap; "22GiB", "24GB", "22" (GiB)
};
// Adds --device, --dtype, --threads and --max-gpu-memory to a subcommand.
void add_compute_options(CLI::App& sub, ComputeOptions& opts);
// The run's context; applies --threads and --max-gpu-memory.
RunContext context_from(const ComputeOptions& opts, uint64_t seed = 0);
// "22GiB", "512MiB", "24GB", "24" (GiB) -> bytes; ConfigError naming `what` otherwise.
uint64_t parse_size(const std::string& text, const std::string& what);

// Reads a plan file (`--plan`); a plan made by `kldq plan` must come from a profile of `model`
// (the checkpoint fingerprints agree), else ConfigError naming both.
quant::Plan read_plan_for(const std::string& plan_path, const std::string& model);

}  // namespace kldq::cli
