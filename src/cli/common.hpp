// Shared pieces of the kldq subcommands: the registration signature, the options every computing
// command takes (device, dtype, memory budget; the method and its calibration) and printing a
// task's result. What the options mean is the library's (model/compute.hpp, quant/resolve.hpp).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "kldq/model/compute.hpp"
#include "kldq/quant/resolve.hpp"

namespace kldq::cli {

// A subcommand registers itself on `app` and, when selected, stores what to run in `action`
// (executed by main after parsing, so errors map to exit codes in one place).
using Action = std::function<int()>;

void register_inspect(CLI::App& app, Action& action);
void register_synth(CLI::App& app, Action& action);
void register_logits(CLI::App& app, Action& action);
void register_tokenize(CLI::App& app, Action& action);
void register_quantize(CLI::App& app, Action& action);
void register_export(CLI::App& app, Action& action);
void register_eval(CLI::App& app, Action& action);
void register_profile(CLI::App& app, Action& action);
void register_plan(CLI::App& app, Action& action);
void register_run(CLI::App& app, Action& action);
void register_report(CLI::App& app, Action& action);
void register_generate(CLI::App& app, Action& action);

// Prints a task's table `err` on stderr, then its result lines `out` on stdout; returns 0.
int print(const std::string& out, const std::string& err = "");

// Adds --device, --dtype, --threads, --max-gpu-memory and --resident-blocks to a subcommand.
void add_compute_options(CLI::App& sub, model::ComputeOptions& opts);
// Adds --method, --group, --damp, --act-order and, `with_calibration`, --calib, --samples,
// --seq-len and (`with_seed`) --seed: each setting stored only when given, so a plan's recorded
// one can be the default. `with_seed` false leaves --seed to the command.
void add_method_options(CLI::App& sub, quant::MethodRequest& opts, bool with_calibration,
                        bool with_seed = true);

}  // namespace kldq::cli
