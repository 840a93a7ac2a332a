// Shared pieces of the kldq subcommands: registration signature, device/dtype options.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "kldq/core/context.hpp"

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

struct ComputeOptions {
  std::string device;  // "" = cuda when present, else cpu
  std::string dtype;   // "" = bf16 on cuda, fp32 on cpu
  int threads = 0;
};
// Adds --device, --dtype and --threads to a subcommand.
void add_compute_options(CLI::App& sub, ComputeOptions& opts);
RunContext context_from(const ComputeOptions& opts, uint64_t seed = 0);

}  // namespace kldq::cli
