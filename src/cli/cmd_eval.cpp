// `kldq eval MODEL [--reference REF] [--base FORMAT | --plan PLAN] [--ppl FILE] [--kld]
// [--mmlu DIR|JSONL] [--tasks LIST --tasks-dir DIR] [--speed] -o metrics.json`: perplexity (gptq,
// llamacpp or sliding protocol), KL divergence against the reference, MMLU accuracy (5-shot or chat
// 0-shot) and zero-shot task accuracies with per-item predictions and answer flips, and the
// memory report (docs/PROTOCOLS.md).
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <optional>

#include "commands.hpp"
#include "eval_inputs.hpp"
#include "eval_speed.hpp"
#include "eval_tasks.hpp"
#include "kldq/build_config.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/eval/flips.hpp"
#include "kldq/eval/memory.hpp"
#include "kldq/eval/merge.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/io/corpus.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Device bytes of one batch of task items (tasks_score.cpp): B items' shared prefixes [B, P]
// run into a cache of S = P + Tr columns, copied to one row per choice, and the choices' rests
// [B C, Tr] attending over it; attention counted as the math kernel allocates it (CUDA's fused
// kernels allocate less). A batch wider than the context runs its inputs whole.
uint64_t tasks_working(const TaskInputs& t, int64_t batch, const model::ModelConfig& c,
                       c10::ScalarType dtype) {
  const uint64_t B = uint64_t(batch), R = B * uint64_t(t.max_choices), e = c10::elementSize(dtype);
  const uint64_t heads = uint64_t(c.num_heads), ctx = uint64_t(c.max_position_embeddings);
  const uint64_t P = uint64_t(t.max_shared), Tr = uint64_t(t.max_rest), S = std::min(P + Tr, ctx);
  const uint64_t kv = 2 * uint64_t(c.num_layers) * uint64_t(c.kv_dim()) * S * e;  // per row
  // The math kernel also repeats K and V to every query head over the S columns in fp32 and
  // makes a float copy of the mask (4 + 1 bytes per mask entry with the boolean).
  const uint64_t kv_math = 2 * S * uint64_t(c.q_dim()) * 4;  // per row
  const uint64_t prefix = model::forward_bytes(c, int64_t(B), int64_t(P), dtype) +
                          B * (P * S * (4 * heads + 5) + kv_math);
  const uint64_t rest = model::forward_bytes(c, int64_t(R), int64_t(Tr), dtype) +
                        R * (Tr * S * (4 * heads + 5) + kv_math);
  const uint64_t cached = (B + R) * kv + std::max(prefix, rest);
  if (P + Tr <= ctx) return cached;
  const uint64_t T = std::min(uint64_t(t.max_tokens), ctx);  // whole inputs, causal
  return std::max(cached,
                  model::forward_bytes(c, int64_t(R), int64_t(T), dtype) + 4 * R * heads * T * T);
}

// Device bytes of the evaluation: MODEL's weights (plus the packed layers of an in-memory plan;
// the reference shares MODEL's when it is MODEL), a separate --reference's weights block by
// block, and the working set of one batch of windows or prompts through both models.
model::MemoryNeeds eval_needs(const EvalCliOptions& o, const std::optional<quant::Plan>& plan,
                              const quant::MethodOptions& method,
                              const std::optional<calib::Calibration>& cal,
                              const model::ModelConfig& c, const Inputs& in, bool separate_ref,
                              const RunContext& ctx) {
  model::MemoryNeeds n = model::Decoder::weight_needs(o.model, ctx.dtype);
  if (plan) add_plan_bytes(n, *plan, c);
  if (separate_ref) {
    const model::MemoryNeeds r = model::Decoder::weight_needs(o.reference, ctx.dtype);
    n.fixed += r.fixed;
    // Block i of both streams together; a reference of another depth stays resident whole.
    if (r.blocks.size() == n.blocks.size())
      for (size_t b = 0; b < n.blocks.size(); ++b) n.blocks[b] += r.blocks[b];
    else
      for (uint64_t bytes : r.blocks) n.fixed += bytes;
  }
  const int64_t T =
      std::max<int64_t>(o.ppl.empty() ? 0 : in.ppl.ctx,
                        o.mmlu.empty() ? 0 : std::min<int64_t>(in.mmlu.max_len, 2048));
  n.working = 2 * model::forward_bytes(c, o.batch, T, ctx.dtype) +
              model::head_bytes(c, 1024, c10::elementSize(ctx.dtype) + 8) + (256ULL << 20);
  // MMLU's shared prefixes: a batch's keys and values over all blocks (and the one-row prefix),
  // and the attention mask [batch, 1, T, T] with its intermediates.
  const uint64_t L = uint64_t(std::min<int64_t>(c.max_position_embeddings, 2048));
  if (!o.mmlu.empty())
    n.working += 2 * uint64_t(c.num_layers) * uint64_t(o.batch + 1) * uint64_t(c.kv_dim()) * L *
                     c10::elementSize(ctx.dtype) +
                 4 * uint64_t(o.batch) * L * L;
  if (!o.tasks.empty()) n.working += tasks_working(in.tasks, o.batch, c, ctx.dtype);
  if (o.speed) n.working += speed_working(c, SpeedProtocol{}, ctx.dtype);
  if (plan) add_quantize_working(n, method, cal, c, ctx.dtype);
  return n;
}

// MODEL (quantized in memory when there is a plan) and the reference when one is needed: a
// separate --reference, else MODEL itself unquantized, whose weights the quantized model shares.
std::pair<model::Decoder, std::optional<model::Decoder>> load_models(
    const EvalCliOptions& o, const std::optional<quant::Plan>& plan,
    const quant::MethodOptions& method, const std::optional<calib::Calibration>& cal,
    const RunContext& ctx, bool need_ref, const std::vector<bool>& streamed,
    std::string& described) {
  std::optional<model::Decoder> ref;
  if (need_ref && !o.reference.empty()) {
    const bool same_depth =
        model::load_config(std::filesystem::path(o.reference) / "config.json").num_layers ==
        static_cast<int>(streamed.size());
    ref = model::Decoder::load(o.reference, ctx.device, ctx.dtype,
                               same_depth ? streamed : std::vector<bool>());
  }
  described = o.model;
  if (!plan)
    return {model::Decoder::load(o.model, ctx.device, ctx.dtype, streamed), std::move(ref)};
  model::Decoder m = model::Decoder::load(o.model, ctx.device, ctx.dtype, streamed);
  if (need_ref && o.reference.empty()) ref = m.share();
  quant::apply_layers(m, quant::quantize_layers(m, plan->resolve(m.linear_ids()), method,
                                                cal ? cal->ids : at::Tensor()));
  described += " (" + plan->method + "/" + plan->base.name() + " in memory)";
  return {std::move(m), std::move(ref)};
}

// The lines printed after an evaluation: perplexity and KL, MMLU and flips.
std::string summary_lines(const nlohmann::json& j, const std::string& mmlu_tag) {
  std::string line;
  if (j.contains("ppl")) {
    line += fmt::format("ppl {:.4f} over {} tokens", j["ppl"].get<double>(),
                        j["tokens"].get<int64_t>());
    if (j.contains("ppl_ref"))
      line += fmt::format(" (reference {:.4f})", j["ppl_ref"].get<double>());
    if (j.contains("kl_mean"))
      line += fmt::format("; KL {:.6f} ± {:.6f}, same top-1 {:.4f}", j["kl_mean"].get<double>(),
                          j["kl_stderr"].get<double>(), j["top1_agree"].get<double>());
    if (j.contains("plan_predicted_kl"))
      line += fmt::format(" (the plan predicted {:.6f})", j["plan_predicted_kl"].get<double>());
    line += "\n";
  }
  if (j.contains("mmlu_acc")) {
    line += fmt::format("MMLU {} accuracy {:.4f} over {} questions", mmlu_tag,
                        j["mmlu_acc"].get<double>(), j["mmlu_n"].get<int64_t>());
    if (j.contains("flip_rate"))
      line += fmt::format(" (reference {:.4f}); flips {:.4f}, answer changes {:.4f}",
                          j["mmlu_acc_ref"].get<double>(), j["flip_rate"].get<double>(),
                          j["answer_change_rate"].get<double>());
    line += "\n";
  }
  return line;
}

// ConfigError for options that contradict each other or need another one.
void check_options(const EvalCliOptions& o) {
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
void check_checkpoints(const EvalCliOptions& o) {
  for (const auto& dir : {o.model, o.reference})
    if (!dir.empty()) require_checkpoint_dir(dir);
}

struct Outputs {
  fs::path metrics, predictions, task_predictions;  // -o, MMLU's and the tasks' predictions
};

Outputs outputs_of(const EvalCliOptions& o) {
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

// The run's memory, streaming and time figures.
void add_run_stats(nlohmann::json& j, const RunContext& ctx, const std::string& residency,
                   uint64_t streamed_bytes, Clock::time_point t0) {
  j["peak_cuda_bytes"] = peak_allocated_bytes(ctx.device);
  j["peak_host_bytes"] = peak_host_bytes();
  j["residency"] = residency;
  j["streamed_bytes"] = streamed_bytes;
  log::debug("eval: {} copied host-to-device for streamed blocks; peak host memory {}",
             model::gib(streamed_bytes), model::gib(peak_host_bytes()));
  j["seconds"] = seconds_since(t0);
}

// What every metrics file starts with: the version, models, quantization and settings.
nlohmann::json metrics_header(const EvalCliOptions& o, const std::optional<quant::Plan>& plan,
                              const quant::MethodOptions& method,
                              const std::optional<calib::Calibration>& cal, bool has_ref,
                              const RunContext& ctx) {
  // The reference evaluated against: --reference, or MODEL itself unquantized.
  const std::string ref_name = o.reference.empty() ? (has_ref ? o.model : "") : o.reference;
  nlohmann::json j = {{"kldq_version", KLDQ_VERSION_STRING},
                      {"model", o.model},
                      {"quantization", plan ? (o.plan.empty() ? plan->base.name() : o.plan) : ""},
                      {"reference", ref_name},
                      {"dtype", dtype_name(ctx.dtype)},
                      {"device", ctx.device.str()},
                      {"device_name", device_description(ctx.device)},
                      {"batch", o.batch}};
  if (plan)
    j["method_settings"] = quant::method_json(method, cal ? cal->identity : nlohmann::json());
  return j;
}

// MODEL's config with the context and vocabulary both models share (into `config`), the
// tokenizer, and every measurement's data fitted to them.
Inputs load_inputs(const EvalCliOptions& o, model::ModelConfig& config,
                   std::unique_ptr<io::Tokenizer>& tokenizer) {
  // Windows and prompts must fit both models' context and vocabulary.
  config = model::load_config(fs::path(o.model) / "config.json");
  if (o.speed) check_speed_protocol(config, SpeedProtocol{});  // MODEL alone generates
  if (!o.reference.empty()) {
    const model::ModelConfig rc = model::load_config(fs::path(o.reference) / "config.json");
    config.max_position_embeddings =
        std::min(config.max_position_embeddings, rc.max_position_embeddings);
    config.vocab_size = std::min(config.vocab_size, rc.vocab_size);
  }
  Inputs in = settings_from(o, config.max_position_embeddings);
  // --speed alone generates from random ids: no tokenizer needed (synthesized checkpoints).
  if (o.ppl.empty() && o.mmlu.empty() && o.tasks.empty()) return in;
  tokenizer = io::Tokenizer::load(o.reference.empty() ? o.model : o.reference);
  read_data(o, *tokenizer, in);
  in.tasks = read_tasks(o, *tokenizer, config.max_position_embeddings, config.vocab_size);
  check_vocabulary(in, config.vocab_size);
  return in;
}

// Perplexity (and KL against `ref`, when given) over the --ppl windows into `j`.
void measure_ppl(const EvalCliOptions& o, const model::Decoder& m, const model::Decoder* r,
                 const Inputs& in, const std::optional<quant::Plan>& plan,
                 const std::string& described, nlohmann::json& j) {
  const c10::Device device = m.device();
  log::info("eval {}: perplexity ({}), {} tokens of {}, {} windows of {}{}", described,
            eval::ppl_protocol_name(in.ppl.protocol), in.tokens.size(), o.ppl, in.windows.size(),
            in.ppl.ctx,
            in.ppl.shard.whole()
                ? ""
                : fmt::format(" (shard {}: the batches with index % {} == {})", in.ppl.shard.name(),
                              in.ppl.shard.count, in.ppl.shard.index));
  if (device.is_cuda()) {
    // Warm-up on the first window, not timed: CUDA loads kernels lazily and cuBLAS picks
    // algorithms on first use, a one-time cost per process that the rate should not include.
    eval::PplOptions whole = in.ppl;
    whole.shard = {};  // a shard may not own the first window
    eval::score_windows(m, r, in.tokens, {in.windows.front()}, whole);
    device_synchronize(device);
  }
  const auto t = Clock::now();
  const eval::TokenScores s = eval::score_windows(m, r, in.tokens, in.windows, in.ppl);
  device_synchronize(device);
  const double secs = seconds_since(t);
  j.update(eval::ppl_summary(s.nll, s.windows));
  if (!in.ppl.shard.whole()) j["shard_data"]["ppl"] = eval::ppl_shard_data(s, o.kld);
  if (o.kld) {
    const auto rs = eval::ppl_summary(s.nll_ref, s.windows, "_ref");
    j["ppl_ref"] = rs["ppl_ref"], j["nll_mean_ref"] = rs["nll_mean_ref"];
    j.update(eval::kl_summary(s));
    // The plan's prediction from its profiles (their calibration text, not this one).
    if (plan && plan->planner.contains("predicted_kl"))
      j["plan_predicted_kl"] = plan->planner["predicted_kl"];
  }
  j["seconds_ppl"] = secs;
  j["tokens_per_second"] = double(s.nll.size()) / secs;
  j["ppl_settings"] = {{"protocol", eval::ppl_protocol_name(in.ppl.protocol)},
                       {"ctx", in.ppl.ctx},
                       {"stride", in.ppl.stride > 0 ? in.ppl.stride : in.ppl.ctx / 2},
                       {"bos", in.ppl.bos},
                       {"file", o.ppl},
                       {"sha256", in.ppl_sha256}};
  if (in.ppl.protocol != eval::PplProtocol::SLIDING) j["ppl_settings"].erase("stride");
}

// MMLU accuracy, and flips against the reference's predictions (saved, or of `ref`), into `j`;
// returns the predictions JSONL.
std::string measure_mmlu(const EvalCliOptions& o, const model::Decoder& m,
                         const model::Decoder* ref, const io::Tokenizer& tokenizer, Inputs& in,
                         const fs::path& predictions, const std::string& described,
                         nlohmann::json& j) {
  const c10::Device device = m.device();
  log::info("eval {}: MMLU {} on {} questions of {}", described, in.mmlu_tag, in.items.size(),
            o.mmlu);
  const auto t = Clock::now();
  const auto preds =
      eval::score_mmlu(m, tokenizer, in.mmlu_data, in.items, in.answers, in.mmlu, "MMLU");
  j.update(eval::mmlu_summary(preds));
  if (!in.ref_predictions && ref)
    in.ref_predictions = eval::score_mmlu(*ref, tokenizer, in.mmlu_data, in.items, in.answers,
                                          in.mmlu, "MMLU reference");
  if (in.ref_predictions)
    j.update(eval::flip_summary(
        *in.ref_predictions, preds,
        o.reference_predictions.empty() ? "reference" : o.reference_predictions));
  device_synchronize(device);
  j["seconds_mmlu"] = seconds_since(t);
  j["mmlu_settings"] = {{"protocol", in.mmlu_tag},    {"limit", in.mmlu.limit},
                        {"max_len", in.mmlu.max_len}, {"path", o.mmlu},
                        {"sha256", in.mmlu_sha256},   {"predictions", predictions.string()}};
  j["mmlu_settings"]["shared_prefix"] = in.mmlu.shared_prefix;
  if (!in.ppl.shard.whole())
    j["shard_data"]["mmlu"] = eval::mmlu_shard_data(
        preds, in.ref_predictions ? &*in.ref_predictions : nullptr,
        o.reference_predictions.empty() ? "reference" : o.reference_predictions, in.mmlu_tag,
        in.mmlu_subjects);
  return eval::predictions_jsonl(preds, in.mmlu_tag);
}

// `kldq eval --merge`: the shards read and checked, then one run's metrics and predictions.
Printed merge_eval_cmd(const EvalCliOptions& o) {
  if (!o.model.empty() || !o.reference.empty() || !o.ppl.empty() || !o.mmlu.empty() ||
      !o.tasks.empty() || !o.shard.empty() || !o.base.empty() || !o.plan.empty() || o.kld ||
      o.speed || !o.reference_predictions.empty() || !o.method.calib.empty())
    throw ConfigError(
        "eval --merge: give only the shard files, -o and --predictions (the shards "
        "say what was evaluated)");
  const std::vector<fs::path> inputs(o.merge.begin(), o.merge.end());
  const fs::path metrics = file_output(o.out, "-o", inputs);
  const std::vector<ShardFile> shards = read_shard_files(o.merge);
  eval::MergedEval merged = eval::merge_shards(shards);
  fs::path predictions;
  if (!merged.predictions_jsonl.empty()) {
    predictions = file_output(o.predictions.empty()
                                  ? fs::path(metrics).replace_extension(".predictions.jsonl")
                                  : fs::path(o.predictions),
                              "--predictions", inputs);
    if (predictions == metrics)
      throw ConfigError(fmt::format("--predictions {}: the same file as -o", predictions.string()));
    merged.metrics["mmlu_settings"]["predictions"] = predictions.string();
    io::write_file_atomic(predictions, merged.predictions_jsonl);
  }
  try {
    io::write_file_atomic(metrics, merged.metrics.dump(2) + "\n");
  } catch (...) {  // no partial output
    if (!predictions.empty()) remove_tree(predictions);
    throw;
  }
  return {
      fmt::format("merged {} shards -> {}\n", shards.size(), metrics.string()) +
          summary_lines(merged.metrics, merged.metrics.contains("mmlu_settings")
                                            ? merged.metrics["mmlu_settings"].value("protocol", "")
                                            : ""),
      ""};
}

}  // namespace

Printed run_eval(const EvalCliOptions& o) {
  if (!o.merge.empty()) return merge_eval_cmd(o);
  if (o.model.empty()) throw ConfigError("eval: MODEL is required (or --merge SHARD.json...)");
  const auto t0 = Clock::now();
  check_options(o);
  const bool quantize = !o.base.empty() || !o.plan.empty();
  const Outputs outs = outputs_of(o);
  check_checkpoints(o);
  const std::optional<quant::Plan> plan = plan_from(o.model, o.base, o.plan, o.method);
  const RunContext ctx = context_from(o.compute);
  model::ModelConfig config;
  std::unique_ptr<io::Tokenizer> tokenizer;
  Inputs in = load_inputs(o, config, tokenizer);
  const Shard shard = parse_shard(o.shard, "--shard", "perplexity batches and MMLU subjects");
  if (!shard.whole()) shard_inputs(shard, in);

  // Calibration for gptq/awq, from MODEL's tokenizer (the one the plan's layers are fitted on).
  // The method's settings (a plan's recorded ones under the command line's), resolved once.
  const quant::MethodOptions method =
      plan ? method_options(o.method, plan->method, &*plan) : quant::MethodOptions{};
  const std::optional<calib::Calibration> cal =
      plan ? method_calibration(o.method, method.method, o.model, &*plan) : std::nullopt;
  // The reference: --reference, else MODEL itself unquantized when it was quantized here and
  // something needs it (KL, or MMLU flips without saved reference predictions).
  const bool need_ref = (o.kld || (!o.mmlu.empty() && !in.ref_predictions) ||
                         (!o.tasks.empty() && o.reference_task_predictions.empty())) &&
                        (!o.reference.empty() || quantize);
  const model::MemoryNeeds needs =
      eval_needs(o, plan, method, cal, config, in, need_ref && !o.reference.empty(), ctx);
  const model::MemoryPlan residency =
      plan_residency(ctx, o.compute, needs,
                     o.speed ? "--batch, --ctx or --mmlu's prompt length (--speed needs batch 16 "
                               "of 384 positions)"
                             : "--batch, --ctx or --mmlu's prompt length");
  std::string described;
  auto [m, ref] = load_models(o, plan, method, cal, ctx, need_ref, residency.streamed, described);

  nlohmann::json j = metrics_header(o, plan, method, cal, ref.has_value(), ctx);
  if (!shard.whole())
    j["shard"] = {{"index", shard.index}, {"count", shard.count}, {"windows", in.windows.size()}};
  j.update(eval::memory_report(m));
  device_synchronize(ctx.device);
  reset_peak_allocated_bytes(ctx.device);
  if (!o.ppl.empty()) measure_ppl(o, m, o.kld ? &*ref : nullptr, in, plan, described, j);
  const std::string predictions = o.mmlu.empty()
                                      ? ""
                                      : measure_mmlu(o, m, ref ? &*ref : nullptr, *tokenizer, in,
                                                     outs.predictions, described, j);
  std::string more_lines, task_predictions;
  if (!o.tasks.empty())
    task_predictions = run_tasks(in.tasks, o, m, ref ? &*ref : nullptr,
                                 outs.task_predictions.string(), j, more_lines);
  if (o.speed) j["speed"] = measure_speed(m, SpeedProtocol{}, more_lines);
  add_run_stats(j, ctx, residency.describe(needs),
                m.streamed_bytes() + (ref ? ref->streamed_bytes() : 0), t0);
  if (!predictions.empty()) io::write_file_atomic(outs.predictions, predictions);
  if (!task_predictions.empty()) io::write_file_atomic(outs.task_predictions, task_predictions);
  io::write_file_atomic(outs.metrics, j.dump(2) + "\n");

  const std::string line = summary_lines(j, in.mmlu_tag);
  return {line + more_lines +
              fmt::format("weights {} bytes, {:.3f} bits per weight (linear layers)\n",
                          j["weight_bytes"].get<uint64_t>(), j["bits_per_weight"].get<double>()),
          ""};
}

void register_eval(CLI::App& app, Action& action) {
  auto opts = std::make_shared<EvalCliOptions>();
  auto* sub = app.add_subcommand("eval", "perplexity, KL, MMLU and flips against a reference");
  // Required unless --merge (checked by run_eval).
  sub->add_option("MODEL", opts->model, "checkpoint or quantized checkpoint");
  sub->add_option("--reference", opts->reference, "reference checkpoint (default: MODEL)");
  sub->add_option("--base", opts->base, "quantize MODEL in memory to this format first");
  sub->add_option("--plan", opts->plan, "quantize MODEL in memory with this plan first");
  sub->add_option("--ppl", opts->ppl, "text file (whole) or JSONL (rows' \"text\" joined)");
  sub->add_option("--ppl-protocol", opts->ppl_protocol, "gptq (default), llamacpp or sliding");
  sub->add_option("--ctx", opts->ctx,
                  "window length (default 2048; llamacpp 512; capped by the model)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  sub->add_option("--stride", opts->stride, "sliding: tokens between windows (default ctx/2)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--kld", opts->kld, "KL divergence against the reference, per token");
  sub->add_flag("--speed", opts->speed,
                "prefill and decode tokens/s of MODEL (prompt 128, 256 new, batch 1 and 16)");
  sub->add_option("--mmlu", opts->mmlu, "MMLU directory (dev/, test/ CSVs) or JSONL file");
  sub->add_option("--mmlu-protocol", opts->mmlu_protocol, "5shot (default) or chat0shot");
  sub->add_option("--shots", opts->shots, "dev examples per prompt (5shot protocol; default 5)")
      ->check(CLI::Range(0, 64));
  sub->add_flag("--mmlu-unshared", opts->mmlu_unshared,
                "run every MMLU prompt whole instead of each subject's few-shot prefix once "
                "(the same scores; for benchmarks)");
  sub->add_option("--mmlu-limit", opts->mmlu_limit, "first N test questions in subject order")
      ->check(CLI::PositiveNumber);
  sub->add_option("--predictions", opts->predictions,
                  "per-question MMLU predictions, JSONL (default: beside -o)");
  sub->add_option("--reference-predictions", opts->reference_predictions,
                  "flips against a previous run's predictions instead of running the reference");
  sub->add_option("--tasks", opts->tasks,
                  "zero-shot tasks, comma-separated: arc_easy, arc_challenge, hellaswag, piqa, "
                  "winogrande, boolq, openbookqa, or NAME for --tasks-dir/NAME.jsonl");
  sub->add_option("--tasks-dir", opts->tasks_dir, "directory of the task files");
  sub->add_option("--tasks-limit", opts->tasks_limit, "first N items of each task")
      ->check(CLI::PositiveNumber);
  sub->add_option("--task-predictions", opts->task_predictions,
                  "per-item task predictions, JSONL (default: beside -o, .tasks.jsonl)");
  sub->add_option("--reference-task-predictions", opts->reference_task_predictions,
                  "task flips against a previous run's predictions instead of the reference");
  sub->add_option("--batch", opts->batch,
                  "windows, prompts or task items per forward (default 8, as an experiment's eval)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--shard", opts->shard,
                  "i/n: only the perplexity batches and MMLU subjects with index % n == i (merge "
                  "the n shards with --merge)");
  sub->add_option("--merge", opts->merge,
                  "shard metrics (--shard) to merge into one run's metrics, instead of evaluating");
  sub->add_option("-o,--output", opts->out, "metrics JSON")->required();
  add_method_options(*sub, opts->method, true);
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return print(run_eval(*opts)); }; });
}

}  // namespace kldq::cli
