// Shared pieces of the kldq subcommands: registration signature, device/dtype options.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <optional>
#include <string>

#include "kldq/calib/calibration.hpp"
#include "kldq/core/context.hpp"
#include "kldq/core/shard.hpp"
#include "kldq/model/residency.hpp"
#include "kldq/quant/plan.hpp"
#include "kldq/quant/quantizer.hpp"

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

// ConfigError "DIR: no such checkpoint directory" unless `dir` is a directory (checked before
// any work or log line that names the model).
void require_checkpoint_dir(const std::string& dir);

struct ComputeOptions {
  std::string device;  // "" = cuda when present, else cpu
  std::string dtype;   // "" = bf16 on cuda, fp32 on cpu
  int threads = 0;
  std::string max_gpu_memory;  // "" = no cap; "22GiB", "24GB", "22" (GiB)
  int resident_blocks = -1;    // -1: as many as the budget allows
};
// Adds --device, --dtype, --threads and --max-gpu-memory to a subcommand.
void add_compute_options(CLI::App& sub, ComputeOptions& opts);
// The run's context; applies --threads and --max-gpu-memory.
RunContext context_from(const ComputeOptions& opts, uint64_t seed = 0);
// `--gpus all | I,J,...`: one context per CUDA device named (CUDA's numbering: `--gpus 0` is the
// first GPU alone, as the default on a CUDA machine), each as context_from gives it with
// --max-gpu-memory applied per device; "" is context_from's one context. ConfigError for no CUDA
// device, an index out of range, one given twice, other text, or --device given as well.
std::vector<RunContext> contexts_from(const ComputeOptions& opts, const std::string& gpus);
// The JSON files of `--merge`, each named for messages.
std::vector<ShardFile> read_shard_files(const std::vector<std::string>& paths);
// Where a command's weights and caches live (model::plan_memory): on CUDA within
// --max-gpu-memory (default: the device's free memory less 5 %), on the CPU all resident;
// --resident-blocks caps the resident blocks on either. Logs the decision in one line when
// anything streams or moves to the host; `lower` names the options that lower the need.
model::MemoryPlan plan_residency(const RunContext& ctx, const ComputeOptions& opts,
                                 const model::MemoryNeeds& needs, const std::string& lower);
// What an experiment's stages are keyed by besides their inputs: {"device": "cuda"|"cpu",
// "dtype": "bf16"|...}.
nlohmann::json compute_tag(const RunContext& ctx);

// The quantization method and its settings (--method, --damp, --act-order, --group) and, for
// commands that take them, the calibration windows (--calib, --samples, --seq-len, --seed).
struct MethodCliOptions {
  std::string method;  // "" = rtn, or the plan's method
  int group = 0;       // 0 = the format's own
  // Set when given (on the command line, or by an experiment): the rest come from a plan's
  // recorded settings, else the defaults (quant::GptqOptions, calib::CalibrationSpec).
  std::optional<double> damp;
  std::optional<bool> act_order;
  std::string calib;
  std::optional<int64_t> samples, seq_len;
  std::optional<uint64_t> seed;
  bool gptq_given() const { return damp || act_order; }
  bool window_given() const { return samples || seq_len || seed; }
};
// `with_seed` false leaves --seed to the command (the calibration seed is then the plan's or 0).
void add_method_options(CLI::App& sub, MethodCliOptions& opts, bool with_calibration,
                        bool with_seed = true);
// The method's settings; `method` overrides opts.method when not empty. ConfigError when GPTQ's
// options were given for another method. With a plan whose method_settings are of the same
// method, its settings are the defaults and the command line's given options override them.
quant::MethodOptions method_options(const MethodCliOptions& opts, const std::string& method,
                                    const quant::Plan* plan = nullptr);
// `base` with --group applied ("int4" + 128 -> int4_g128, "nf4" + 128 -> nf4_b128); ConfigError
// naming --group for a format without groups or a base that already names its group.
formats::FormatSpec base_format(const std::string& base, int group, const std::string& what);
// The calibration windows a calibrated method needs (none for rtn), tokenized with `model`'s
// tokenizer: ConfigError naming --calib when it is missing (checked first), when calibration
// options were given to rtn, or when the windows are longer than the model's context or hold ids
// outside its vocabulary. With a plan whose method_settings (same method) record their
// calibration, the recorded file and windows are the defaults (ConfigError naming the plan's key
// when that file is gone and no --calib is given), and a warning says what differs when the text
// or the windows are not the recorded ones.
std::optional<calib::Calibration> method_calibration(const MethodCliOptions& opts,
                                                     const std::string& method,
                                                     const std::string& model,
                                                     const quant::Plan* plan = nullptr);

// Reads a plan file (`--plan`); a plan made by `kldq plan` must come from a profile of `model`
// (the checkpoint fingerprints agree), else ConfigError naming both.
quant::Plan read_plan_for(const std::string& plan_path, const std::string& model);
// The plan of --base or --plan for `model` (read and checked before any data; --method overrides
// a plan's); none when both are empty (the model as it is).
std::optional<quant::Plan> plan_from(const std::string& model, const std::string& base,
                                     const std::string& plan, const MethodCliOptions& method);
// Raises needs.working to what quantizing in memory with `method` takes first: HQQ's fit of one
// layer, or GPTQ/AWQ's calibration states, Hessians and inputs (with `cal`).
void add_quantize_working(model::MemoryNeeds& needs, const quant::MethodOptions& method,
                          const std::optional<calib::Calibration>& cal, const model::ModelConfig& c,
                          c10::ScalarType dtype);
// Adds the packed layers of `plan` (held beside the model's weights, block by block) to `needs`.
void add_plan_bytes(model::MemoryNeeds& needs, const quant::Plan& plan,
                    const model::ModelConfig& c);

}  // namespace kldq::cli
