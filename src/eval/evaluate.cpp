// The eval task (eval/evaluate.hpp): options and outputs checked, the plan, method and
// calibration resolved, the data read, the residency planned, then each measurement; or the
// merge of shard metrics. Nothing is written until every measurement is done.
#include "kldq/eval/evaluate.hpp"

#include <fmt/format.h>

#include "evaluate_steps.hpp"
#include "kldq/build_config.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/output.hpp"
#include "kldq/core/shard.hpp"
#include "kldq/eval/memory.hpp"
#include "kldq/eval/merge.hpp"
#include "kldq/eval/metrics.hpp"
#include "kldq/eval/speed.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/quant/quantizer.hpp"
#include "request_tasks.hpp"

namespace kldq::eval {
namespace {

namespace fs = std::filesystem;

// The lines printed after an evaluation: perplexity and KL, MMLU and flips.
std::string summary_lines(const Metrics& m) {
  std::string line;
  if (const auto& p = m.ppl) {
    line += fmt::format("ppl {:.4f} over {} tokens", p->ppl, p->tokens);
    if (p->ppl_ref) line += fmt::format(" (reference {:.4f})", *p->ppl_ref);
    if (p->kl)
      line += fmt::format("; KL {:.6f} ± {:.6f}, same top-1 {:.4f}", p->kl->kl_mean,
                          p->kl->kl_stderr, p->kl->top1_agree);
    if (p->plan_predicted_kl)
      line += fmt::format(" (the plan predicted {:.6f})", *p->plan_predicted_kl);
    line += "\n";
  }
  if (const auto& q = m.mmlu) {
    line += fmt::format("MMLU {} accuracy {:.4f} over {} questions", q->settings.protocol, q->acc,
                        q->n);
    if (q->flips)
      line += fmt::format(" (reference {:.4f}); flips {:.4f}, answer changes {:.4f}",
                          q->flips->acc_ref, q->flips->flip_rate, q->flips->answer_change_rate);
    line += "\n";
  }
  return line;
}

// ConfigError for options that contradict each other or need another one.
void check_options(const EvalRequest& o) {
  if (o.ppl.empty() && o.mmlu.empty() && o.tasks.empty() && !o.speed)
    throw ConfigError("nothing to evaluate: give --ppl, --mmlu, --tasks and/or --speed");
  if (o.kld && o.ppl.empty())
    throw ConfigError("--kld: needs --ppl (KL is measured on its windows)");
  if (!o.base.empty() && !o.plan.empty()) throw ConfigError("--base and --plan exclude each other");
  if (!o.reference_predictions.empty() && o.mmlu.empty())
    throw ConfigError("--reference-predictions: needs --mmlu");
  if (o.mmlu_unshared && o.mmlu.empty()) throw ConfigError("--mmlu-unshared: needs --mmlu");
  // A shard's measurements must merge into the whole run's exactly; these do not shard.
  for (const auto& [given, what] : {std::pair{!o.tasks.empty(), "--tasks"},
                                    {o.speed, "--speed"},
                                    {o.mmlu_unshared, "--mmlu-unshared"}})
    if (given && !o.shard.empty())
      throw ConfigError(
          fmt::format("{}: not with --shard (only perplexity, KL and MMLU are sharded)", what));
  for (const auto& [given, what] :
       {std::pair{!o.tasks_dir.empty(), "--tasks-dir"},
        {o.tasks_limit > 0, "--tasks-limit"},
        {!o.task_predictions.empty(), "--task-predictions"},
        {!o.reference_task_predictions.empty(), "--reference-task-predictions"}})
    if (given && o.tasks.empty()) throw ConfigError(fmt::format("{}: needs --tasks", what));
  const bool quantize = !o.base.empty() || !o.plan.empty();
  if (!quantize && (!o.method.method.empty() || !o.method.calib.empty() || o.method.group ||
                    o.method.gptq_given() || o.method.window_given()))
    throw ConfigError(
        "--method, --group, --calib and the method's options quantize in memory; they need --base "
        "or --plan");
  if (o.kld && !quantize && o.reference.empty())
    throw ConfigError("--kld: needs --reference (or --base/--plan, which use MODEL as reference)");
}

// ConfigError for a checkpoint directory that does not exist (after the outputs' checks).
void check_checkpoints(const EvalRequest& o) {
  for (const auto& dir : {o.model, o.reference})
    if (!dir.empty()) io::require_checkpoint_dir(dir);
}

struct Outputs {
  fs::path metrics, predictions, task_predictions;  // -o, MMLU's and the tasks' predictions
};

Outputs outputs_of(const EvalRequest& o) {
  Outputs r;
  // Outputs are checked before any work: never a directory, never one of the inputs.
  const std::vector<fs::path> inputs = {o.model,        o.reference, o.plan,
                                        o.ppl,          o.mmlu,      o.reference_predictions,
                                        o.method.calib, o.tasks_dir, o.reference_task_predictions};
  r.metrics = file_output(o.out, "-o", inputs);
  r.predictions =
      o.mmlu.empty() ? fs::path()
                     : file_output(o.predictions.empty()
                                       ? fs::path(r.metrics).replace_extension(".predictions.jsonl")
                                       : fs::path(o.predictions),
                                   "--predictions", inputs);
  r.task_predictions = o.tasks.empty()
                           ? fs::path()
                           : file_output(o.task_predictions.empty()
                                             ? fs::path(r.metrics).replace_extension(".tasks.jsonl")
                                             : fs::path(o.task_predictions),
                                         "--task-predictions", inputs);
  if (r.predictions == r.metrics)
    throw ConfigError(fmt::format("--predictions {}: the same file as -o", r.predictions.string()));
  if (r.task_predictions == r.metrics ||
      (!r.predictions.empty() && r.task_predictions == r.predictions))
    throw ConfigError(fmt::format("--task-predictions {}: the same file as another output",
                                  r.task_predictions.string()));
  return r;
}

// What every metrics file starts with: the version, models, quantization and settings.
MetricsHeader metrics_header(const EvalRequest& o, const std::optional<quant::Plan>& plan,
                             const quant::MethodOptions& method,
                             const std::optional<calib::Calibration>& cal, bool has_ref,
                             const RunContext& ctx) {
  MetricsHeader h;
  h.kldq_version = KLDQ_VERSION_STRING;
  h.model = o.model;
  h.quantization = plan ? (o.plan.empty() ? plan->base.name() : o.plan) : "";
  // The reference evaluated against: --reference, or MODEL itself unquantized.
  h.reference = o.reference.empty() ? (has_ref ? o.model : "") : o.reference;
  h.dtype = dtype_name(ctx.dtype);
  h.device = ctx.device.str();
  h.device_name = device_description(ctx.device);
  h.batch = o.batch;
  if (plan)
    h.method_settings =
        quant::method_json(method, cal ? std::optional(cal->identity) : std::nullopt);
  return h;
}

// `kldq eval --merge`: the shards read and checked, then one run's metrics and predictions.
EvalReport merge_evaluations(const EvalRequest& o) {
  if (!o.model.empty() || !o.reference.empty() || !o.ppl.empty() || !o.mmlu.empty() ||
      !o.tasks.empty() || !o.shard.empty() || !o.base.empty() || !o.plan.empty() || o.kld ||
      o.speed || !o.reference_predictions.empty() || !o.method.calib.empty())
    throw ConfigError(
        "eval --merge: give only the shard files, -o and --predictions (the shards "
        "say what was evaluated)");
  const std::vector<fs::path> inputs(o.merge.begin(), o.merge.end());
  const fs::path metrics = file_output(o.out, "-o", inputs);
  const std::vector<ShardFile> shards = io::read_shard_files(o.merge);
  MergedEval merged = merge_shards(shards);
  fs::path predictions;
  if (merged.metrics.mmlu) {
    predictions = file_output(o.predictions.empty()
                                  ? fs::path(metrics).replace_extension(".predictions.jsonl")
                                  : fs::path(o.predictions),
                              "--predictions", inputs);
    if (predictions == metrics)
      throw ConfigError(fmt::format("--predictions {}: the same file as -o", predictions.string()));
    merged.metrics.mmlu->settings.predictions = predictions.string();
    io::write_file_atomic(predictions, merged.predictions_jsonl);
  }
  try {
    io::write_file_atomic(metrics, to_json(merged.metrics).dump(2) + "\n");
  } catch (...) {  // no partial output
    if (!predictions.empty()) remove_tree(predictions);
    throw;
  }
  std::string summary = fmt::format("merged {} shards -> {}\n", shards.size(), metrics.string()) +
                        summary_lines(merged.metrics);
  return {std::move(merged.metrics), std::move(summary)};
}

// The predictions, then the metrics: a metrics file is written only after everything it names.
void write_outputs(const Outputs& outs, const std::string& predictions,
                   const std::string& task_predictions, const Metrics& m) {
  if (!predictions.empty()) io::write_file_atomic(outs.predictions, predictions);
  if (!task_predictions.empty()) io::write_file_atomic(outs.task_predictions, task_predictions);
  io::write_file_atomic(outs.metrics, to_json(m).dump(2) + "\n");
}

// The reference: --reference, else MODEL itself unquantized when it is quantized here; needed
// by KL, and by MMLU or task flips without saved reference predictions.
bool needs_reference(const EvalRequest& o, const Inputs& in) {
  const bool quantize = !o.base.empty() || !o.plan.empty();
  return (o.kld || (!o.mmlu.empty() && !in.ref_predictions) ||
          (!o.tasks.empty() && o.reference_task_predictions.empty())) &&
         (!o.reference.empty() || quantize);
}

}  // namespace

EvalReport evaluate(const EvalRequest& o) {
  if (!o.merge.empty()) return merge_evaluations(o);
  if (o.model.empty()) throw ConfigError("eval: MODEL is required (or --merge SHARD.json...)");
  const auto t0 = Clock::now();
  check_options(o);
  const Outputs outs = outputs_of(o);
  check_checkpoints(o);
  const std::optional<quant::Plan> plan = quant::resolve_plan(o.model, o.base, o.plan, o.method);
  const RunContext ctx = model::context_from(o.compute);
  model::ModelConfig config;
  std::unique_ptr<io::Tokenizer> tokenizer;
  Inputs in = load_inputs(o, config, tokenizer);
  const Shard shard = parse_shard(o.shard, "--shard", "perplexity batches and MMLU subjects");
  if (!shard.whole()) shard_inputs(shard, in);

  // Calibration for gptq/awq, from MODEL's tokenizer (the one the plan's layers are fitted on).
  // The method's settings (a plan's recorded ones under the command line's), resolved once.
  const quant::MethodOptions method =
      plan ? quant::resolve_method(o.method, plan->method, &*plan) : quant::MethodOptions{};
  const std::optional<calib::Calibration> cal =
      plan ? quant::resolve_calibration(o.method, method.method, o.model, &*plan) : std::nullopt;
  const bool need_ref = needs_reference(o, in);
  const model::MemoryNeeds needs =
      eval_needs(o, plan, method, cal, config, in, need_ref && !o.reference.empty(), ctx);
  const model::MemoryPlan residency = model::plan_residency(
      ctx, o.compute, needs,
      o.speed ? "--batch, --ctx or --mmlu's prompt length (--speed needs batch 16 "
                "of 384 positions)"
              : "--batch, --ctx or --mmlu's prompt length");
  std::string described;
  auto [m, ref] = load_models(o, plan, method, cal, ctx, need_ref, residency.streamed, described);

  Metrics metrics;
  metrics.header = metrics_header(o, plan, method, cal, ref.has_value(), ctx);
  if (!shard.whole()) metrics.shard = EvalShard{shard.index, shard.count, in.windows.size()};
  metrics.memory = memory_report(m);
  device_synchronize(ctx.device);
  reset_peak_allocated_bytes(ctx.device);
  if (!o.ppl.empty()) measure_ppl(o, m, o.kld ? &*ref : nullptr, in, plan, described, metrics);
  const std::string predictions = o.mmlu.empty()
                                      ? ""
                                      : measure_mmlu(o, m, ref ? &*ref : nullptr, *tokenizer, in,
                                                     outs.predictions, described, metrics);
  std::string more_lines, task_predictions;
  if (!o.tasks.empty())
    task_predictions =
        run_tasks(in.tasks, o, m, ref ? &*ref : nullptr, outs.task_predictions.string(),
                  metrics.tasks.emplace(), more_lines);
  if (o.speed) metrics.speed = measure_speed(m, SpeedProtocol{}, more_lines);
  metrics.figures = run_figures(ctx, residency.describe(needs),
                                m.streamed_bytes() + (ref ? ref->streamed_bytes() : 0), t0);
  write_outputs(outs, predictions, task_predictions, metrics);
  std::string summary = summary_lines(metrics) + more_lines +
                        fmt::format("weights {} bytes, {:.3f} bits per weight (linear layers)\n",
                                    metrics.memory.weight_bytes, metrics.memory.bits_per_weight);
  return {std::move(metrics), std::move(summary)};
}

}  // namespace kldq::eval
