// `kldq eval MODEL [--reference REF] [--base FORMAT | --plan PLAN] [--ppl FILE] [--kld]
// [--mmlu DIR|JSONL] [--tasks LIST --tasks-dir DIR] [--speed] -o metrics.json`: perplexity (gptq,
// llamacpp or sliding protocol), KL divergence against the reference, MMLU accuracy (5-shot or chat
// 0-shot) and zero-shot task accuracies with per-item predictions and answer flips, and the
// memory report (docs/PROTOCOLS.md).
#include "common.hpp"
#include "kldq/eval/evaluate.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/eval/perplexity.hpp"

namespace kldq::cli {

namespace {

// The request, with --ppl-protocol and --mmlu-protocol as typed: parsed through the vocabularies
// when the command runs, so a bad value is kldq's ConfigError naming the option (exit 2).
struct EvalCommand {
  eval::EvalRequest request;
  std::string ppl_protocol = eval::kPplProtocols.name(request.ppl_protocol);
  std::string mmlu_protocol = eval::kMmluProtocols.name(request.mmlu_protocol);
};

// MMLU: the data, protocol and shots, the questions run, and the predictions for flips.
void add_mmlu_options(CLI::App& sub, EvalCommand& cmd) {
  eval::EvalRequest& opts = cmd.request;
  sub.add_option("--mmlu", opts.mmlu, "MMLU directory (dev/, test/ CSVs) or JSONL file");
  sub.add_option("--mmlu-protocol", cmd.mmlu_protocol, eval::kMmluProtocols.names())
      ->capture_default_str();
  sub.add_option("--shots", opts.shots, "dev examples per prompt (5shot protocol)")
      ->default_str(std::to_string(eval::MmluOptions{}.shots))
      ->check(CLI::Range(0, 64));
  sub.add_flag("--mmlu-unshared", opts.mmlu_unshared,
               "run every MMLU prompt whole instead of each subject's few-shot prefix once "
               "(the same scores; for benchmarks)");
  sub.add_option("--mmlu-limit", opts.mmlu_limit, "first N test questions in subject order")
      ->check(CLI::PositiveNumber);
  sub.add_option("--predictions", opts.predictions,
                 "per-question MMLU predictions, JSONL (default: beside -o)");
  sub.add_option("--reference-predictions", opts.reference_predictions,
                 "flips against a previous run's predictions instead of running the reference");
}

// The zero-shot tasks: which, their files, the items run, and the predictions for flips.
void add_task_options(CLI::App& sub, eval::EvalRequest& opts) {
  sub.add_option("--tasks", opts.tasks,
                 "zero-shot tasks, comma-separated: arc_easy, arc_challenge, hellaswag, piqa, "
                 "winogrande, boolq, openbookqa, or NAME for --tasks-dir/NAME.jsonl");
  sub.add_option("--tasks-dir", opts.tasks_dir, "directory of the task files");
  sub.add_option("--tasks-limit", opts.tasks_limit, "first N items of each task")
      ->check(CLI::PositiveNumber);
  sub.add_option("--task-predictions", opts.task_predictions,
                 "per-item task predictions, JSONL (default: beside -o, .tasks.jsonl)");
  sub.add_option("--reference-task-predictions", opts.reference_task_predictions,
                 "task flips against a previous run's predictions instead of the reference");
}

}  // namespace

void register_eval(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<EvalCommand>();
  eval::EvalRequest* opts = &cmd->request;
  auto* sub = app.add_subcommand("eval", "perplexity, KL, MMLU and flips against a reference");
  // Required unless --merge (checked by eval::evaluate).
  sub->add_option("MODEL", opts->model, "checkpoint or quantized checkpoint");
  sub->add_option("--reference", opts->reference, "reference checkpoint (default: MODEL)");
  auto* base =
      sub->add_option("--base", opts->base, "quantize MODEL in memory to this format first");
  sub->add_option("--plan", opts->plan, "quantize MODEL in memory with this plan first")
      ->excludes(base);
  sub->add_option("--ppl", opts->ppl, "text file (whole) or JSONL (rows' \"text\" joined)");
  sub->add_option("--ppl-protocol", cmd->ppl_protocol, eval::kPplProtocols.names())
      ->capture_default_str();
  sub->add_option("--ctx", opts->ctx,
                  "window length (default 2048; llamacpp 512; capped by the model)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  sub->add_option("--stride", opts->stride, "sliding: tokens between windows (default ctx/2)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--kld", opts->kld, "KL divergence against the reference, per token");
  sub->add_flag("--speed", opts->speed,
                "prefill and decode tokens/s of MODEL (prompt 128, 256 new, batch 1 and 16)");
  add_mmlu_options(*sub, *cmd);
  add_task_options(*sub, *opts);
  sub->add_option("--batch", opts->batch,
                  "windows, prompts or task items per forward (as in an experiment's eval)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--shard", opts->shard,
                  "i/n: only the perplexity batches and MMLU subjects with index % n == i (merge "
                  "the n shards with --merge)");
  sub->add_option("--merge", opts->merge,
                  "shard metrics (--shard) to merge into one run's metrics, instead of evaluating");
  sub->add_option("-o,--output", opts->out, "metrics JSON")->required();
  add_method_options(*sub, opts->method, true);
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, cmd] {
    action = [cmd] {
      cmd->request.ppl_protocol = eval::parse_ppl_protocol(cmd->ppl_protocol, "--ppl-protocol");
      cmd->request.mmlu_protocol = eval::parse_mmlu_protocol(cmd->mmlu_protocol, "--mmlu-protocol");
      return print(eval::evaluate(cmd->request).summary);
    };
  });
}

}  // namespace kldq::cli
