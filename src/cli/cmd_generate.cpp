// `kldq generate MODEL [--base F | --plan P] (--prompt TEXT | --prompts FILE.jsonl)
// [--max-new-tokens N] [--temperature T --top-p P --top-k K --seed S] [--chat] [-o out.jsonl]`:
// text from the model as it is or quantized in memory, with the KV cache (eval/generate.hpp).
// One prompt streams its text to stdout; several print (or write to -o) one JSON line each.
#include <fmt/format.h>

#include <iostream>

#include "common.hpp"
#include "kldq/core/log.hpp"
#include "kldq/eval/generate_task.hpp"

namespace kldq::cli {
namespace {

// The prefill and decode rates; decode: tokens after each row's first, over the time after the
// first step.
void log_rates(const eval::GenerateStats& stats, size_t prompts, int64_t rows,
               const std::string& where) {
  const auto rate = [](double n, double s) { return s > 0 ? n / s : 0.0; };
  log::info(
      "{} prompt(s), batch {}: prefill {} tokens in {:.3f} s ({:.0f} tokens/s), {} new "
      "tokens in {:.3f} s of decoding ({:.1f} tokens/s){}",
      prompts, rows, stats.prompt_tokens, stats.prefill_s,
      rate(double(stats.prompt_tokens), stats.prefill_s), stats.new_tokens, stats.decode_s,
      rate(double(stats.new_tokens) - double(prompts), stats.decode_s), where);
}

int run_generate(const eval::GenerateRequest& o) {
  const eval::GenerateReport r =
      eval::generate_texts(o, [](const std::string& text) { std::cout << text << std::flush; });
  if (!r.streamed && o.out.empty()) std::cout << r.lines;
  log_rates(r.stats, r.prompts, r.rows, o.out.empty() ? "" : ", written to " + o.out);
  return 0;
}

}  // namespace

void register_generate(CLI::App& app, Action& action) {
  auto opts = std::make_shared<eval::GenerateRequest>();
  auto* sub = app.add_subcommand("generate", "generate text (greedy or sampled) with a KV cache");
  sub->add_option("MODEL", opts->model, "checkpoint directory")->required();
  auto* base =
      sub->add_option("--base", opts->base, "quantize every linear layer to this format in memory");
  sub->add_option("--plan", opts->plan, "quantize in memory by this plan (kldq plan)")
      ->excludes(base);
  auto* prompt = sub->add_option("--prompt", opts->prompt, "the prompt text");
  sub->add_option("--prompts", opts->prompts, "JSONL file: {\"prompt\": ...} or a string per line")
      ->excludes(prompt);
  sub->add_option("--max-new-tokens", opts->max_new_tokens, "new tokens at most")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  sub->add_option("--temperature", opts->sampling.temperature, "0: greedy")->capture_default_str();
  sub->add_option("--top-p", opts->sampling.top_p, "nucleus sampling mass (1: off)")
      ->capture_default_str();
  sub->add_option("--top-k", opts->sampling.top_k, "sample among the k most likely (0: off)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  sub->add_option("--seed", opts->sampling.seed, "sampling seed")->capture_default_str();
  sub->add_flag("--chat", opts->chat, "wrap each prompt in the model's ChatML chat format");
  sub->add_flag("--ignore-eos", opts->ignore_eos,
                "generate --max-new-tokens for every prompt (speed measurements)");
  sub->add_flag("--no-cuda-graph", opts->no_cuda_graph,
                "launch each decode step's kernels one by one (default: replay a CUDA graph)");
  sub->add_option("--batch", opts->batch, "prompts generated together")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  sub->add_option("-o,--output", opts->out, "write one JSON line per prompt here");
  add_method_options(*sub, opts->method, /*with_calibration=*/true, /*with_seed=*/false);
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return run_generate(*opts); }; });
}

}  // namespace kldq::cli
