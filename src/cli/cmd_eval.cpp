// `kldq eval MODEL [--reference REF] [--base FORMAT | --plan PLAN] [--ppl FILE] [--kld]
// [--mmlu DIR|JSONL] -o metrics.json`: perplexity (gptq, llamacpp or sliding protocol), KL
// divergence against the reference, MMLU accuracy (5-shot or chat 0-shot) with per-question
// predictions and answer flips, and the memory report (docs/PROTOCOLS.md).
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <optional>

#include "commands.hpp"
#include "kldq/build_config.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/eval/flips.hpp"
#include "kldq/eval/memory.hpp"
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

// The evaluation data, read and checked before any model is loaded.
struct Inputs {
  eval::PplOptions ppl;
  std::vector<int32_t> tokens;
  std::vector<eval::Window> windows;
  eval::MmluOptions mmlu;
  eval::MmluData mmlu_data;
  std::vector<eval::MmluItem> items;
  eval::AnswerTokens answers;
  std::string mmlu_tag;  // "5shot:5"
  std::optional<std::vector<eval::MmluPrediction>> ref_predictions;
  std::string ppl_sha256, mmlu_sha256;  // hashed before any model runs
};

// Protocol settings from the options alone (errors before any file is read).
Inputs settings_from(const EvalCliOptions& o, int64_t max_ctx) {
  Inputs in;
  if (!o.ppl.empty()) {
    in.ppl.protocol = eval::parse_ppl_protocol(o.ppl_protocol, "--ppl-protocol");
    const int64_t ctx = o.ctx > 0                                        ? o.ctx
                        : in.ppl.protocol == eval::PplProtocol::LLAMACPP ? 512
                                                                         : 2048;
    in.ppl.ctx = std::min(ctx, max_ctx);
    if (o.stride > 0 && in.ppl.protocol != eval::PplProtocol::SLIDING)
      throw ConfigError("--stride: only the sliding protocol has a stride");
    if (o.stride > in.ppl.ctx)
      throw ConfigError(fmt::format("--stride {} exceeds the window of {}", o.stride, in.ppl.ctx));
    in.ppl.stride = o.stride;
    in.ppl.batch = o.batch;
  }
  if (!o.mmlu.empty()) {
    in.mmlu.protocol = eval::parse_mmlu_protocol(o.mmlu_protocol, "--mmlu-protocol");
    const bool chat = in.mmlu.protocol == eval::MmluProtocol::CHAT0SHOT;
    if (chat && o.shots > 0) throw ConfigError("--shots: chat0shot is a 0-shot protocol");
    in.mmlu.shots = o.shots >= 0 ? o.shots : chat ? 0 : 5;
    in.mmlu.limit = o.mmlu_limit;
    in.mmlu.batch = o.batch;
    in.mmlu.max_len = max_ctx;
    in.mmlu_tag = fmt::format("{}:{}", chat ? "chat0shot" : "5shot", in.mmlu.shots);
  }
  return in;
}

// The evaluation data, read, tokenized and checked before any model is loaded.
void read_data(const EvalCliOptions& o, const io::Tokenizer& tok, Inputs& in) {
  if (!o.ppl.empty()) {
    // The BOS the tokenizer puts in front of a text, if any (not an appended EOS).
    const auto with = tok.encode("a", true), without = tok.encode("a", false);
    const bool adds_bos = with.size() > without.size() &&
                          std::equal(without.begin(), without.end(), with.begin() + 1);
    const std::string text = io::read_corpus(o.ppl);
    if (text.empty()) throw ConfigError(fmt::format("--ppl: {} is empty", o.ppl));
    in.tokens = tok.encode(text, false);
    if (in.ppl.protocol == eval::PplProtocol::LLAMACPP && adds_bos) {
      // llama-perplexity tokenizes with BOS in front of the stream, then writes BOS over each
      // window's first token.
      in.ppl.bos = with.front();
      in.tokens.insert(in.tokens.begin(), in.ppl.bos);
    }
    const auto n = static_cast<int64_t>(in.tokens.size());
    if (in.ppl.protocol == eval::PplProtocol::LLAMACPP && n < 2 * in.ppl.ctx)
      throw ConfigError(
          fmt::format("--ppl: {} has {} tokens; the llamacpp protocol needs at "
                      "least 2 x ctx = {}, as llama-perplexity does",
                      o.ppl, n, 2 * in.ppl.ctx));
    in.windows = eval::make_windows(n, in.ppl);
    if (in.windows.empty())
      throw ConfigError(fmt::format("--ppl: {} has {} tokens, fewer than one window of {}", o.ppl,
                                    n, in.ppl.ctx));
    if (in.ppl.protocol == eval::PplProtocol::LLAMACPP && in.ppl.ctx < 4)
      throw ConfigError(
          "--ctx: the llamacpp protocol scores the second half of each window; "
          "it needs at least 4 tokens");
    in.ppl_sha256 = sha256_path(o.ppl);
  }
  if (!o.mmlu.empty()) {
    in.mmlu_data = eval::load_mmlu(o.mmlu);
    in.items = eval::mmlu_items(in.mmlu_data, in.mmlu);
    in.answers = eval::mmlu_answer_tokens(tok, in.mmlu_data, in.items.front(), in.mmlu);
    in.mmlu_sha256 = sha256_path(o.mmlu);
    if (!o.reference_predictions.empty()) {
      std::string proto;
      in.ref_predictions = eval::read_predictions(o.reference_predictions, &proto);
      if (proto != in.mmlu_tag)
        throw ConfigError(fmt::format("--reference-predictions {}: protocol {}, this run's is {}",
                                      o.reference_predictions, proto, in.mmlu_tag));
    }
  }
}

// Token ids the models have embeddings for: a tokenizer with more added tokens than the model's
// vocabulary would otherwise index out of range on the device.
void check_vocabulary(const Inputs& in, int64_t vocab) {
  int64_t top = -1;
  for (int32_t t : in.tokens) top = std::max<int64_t>(top, t);
  for (const auto& a : in.answers)
    for (int32_t t : a) top = std::max<int64_t>(top, t);
  if (top >= vocab)
    throw ConfigError(
        fmt::format("the tokenizer produced token id {}, outside the model's "
                    "vocabulary of {}",
                    top, vocab));
}

// The plan of --base or --plan (read, and checked against MODEL, before any data); none when
// MODEL is evaluated as it is.
std::optional<quant::Plan> plan_from(const EvalCliOptions& o) {
  if (o.base.empty() && o.plan.empty()) return std::nullopt;
  if (!o.plan.empty()) {
    if (o.method.group) throw ConfigError("--group: applies to --base, not to --plan");
    quant::Plan plan = read_plan_for(o.plan, o.model);
    if (!o.method.method.empty()) plan.method = o.method.method;
    return plan;
  }
  quant::Plan plan;
  plan.method = o.method.method.empty() ? "rtn" : o.method.method;
  plan.base = base_format(o.base, o.method.group, "--base");
  return plan;
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
  if (plan) {
    std::vector<model::LayerId> ids;
    for (int b = 0; b < c.num_layers; ++b)
      for (model::Proj p : model::kAllProjs) ids.push_back({b, p});
    for (const auto& [name, spec] : plan->resolve(ids)) {
      const model::LayerId id = *model::LayerId::parse(name);  // names from the resolver
      const auto shape = model::linear_shape(c, id.proj);
      n.blocks[static_cast<size_t>(id.block)] += spec.bytes(shape[0], shape[1]);
    }
  }
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
  // In-memory GPTQ/AWQ comes first and may need more (hidden states, Hessians, inputs).
  if (plan && cal)
    n.working = std::max(n.working, quant::memory_needs(n, c, {}, method, cal->ids.size(0),
                                                        cal->ids.size(1), ctx.dtype)
                                        .working);
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

}  // namespace

int run_eval(const EvalCliOptions& o) {
  const auto t0 = Clock::now();
  if (o.ppl.empty() && o.mmlu.empty())
    throw ConfigError("nothing to evaluate: give --ppl and/or --mmlu");
  if (o.kld && o.ppl.empty())
    throw ConfigError("--kld: needs --ppl (KL is measured on its windows)");
  if (!o.base.empty() && !o.plan.empty()) throw ConfigError("--base and --plan exclude each other");
  if (!o.reference_predictions.empty() && o.mmlu.empty())
    throw ConfigError("--reference-predictions: needs --mmlu");
  const bool quantize = !o.base.empty() || !o.plan.empty();
  if (!quantize && (!o.method.method.empty() || !o.method.calib.empty() || o.method.group ||
                    o.method.gptq_given || o.method.window_given))
    throw ConfigError(
        "--method, --group, --calib and the method's options quantize in memory; they need --base "
        "or --plan");
  if (o.kld && !quantize && o.reference.empty())
    throw ConfigError("--kld: needs --reference (or --base/--plan, which use MODEL as reference)");
  // Outputs are checked before any work: never a directory, never one of the inputs.
  const std::vector<fs::path> inputs = {
      o.model, o.reference, o.plan, o.ppl, o.mmlu, o.reference_predictions, o.method.calib};
  const fs::path out = file_output(o.out, "-o", inputs);
  const fs::path pred_path =
      o.mmlu.empty() ? fs::path()
                     : file_output(o.predictions.empty()
                                       ? fs::path(out).replace_extension(".predictions.jsonl")
                                       : fs::path(o.predictions),
                                   "--predictions", inputs);
  if (pred_path == out)
    throw ConfigError(fmt::format("--predictions {}: the same file as -o", pred_path.string()));
  for (const auto& dir : {o.model, o.reference})
    if (!dir.empty() && !fs::is_directory(dir))
      throw ConfigError(fmt::format("{}: no such checkpoint directory", dir));

  const std::optional<quant::Plan> plan = plan_from(o);
  const RunContext ctx = context_from(o.compute);
  // Windows and prompts must fit both models' context and vocabulary.
  model::ModelConfig config = model::load_config(fs::path(o.model) / "config.json");
  if (!o.reference.empty()) {
    const model::ModelConfig rc = model::load_config(fs::path(o.reference) / "config.json");
    config.max_position_embeddings =
        std::min(config.max_position_embeddings, rc.max_position_embeddings);
    config.vocab_size = std::min(config.vocab_size, rc.vocab_size);
  }
  Inputs in = settings_from(o, config.max_position_embeddings);
  const auto tokenizer = io::Tokenizer::load(o.reference.empty() ? o.model : o.reference);
  read_data(o, *tokenizer, in);
  check_vocabulary(in, config.vocab_size);

  // Calibration for gptq/awq, from MODEL's tokenizer (the one the plan's layers are fitted on).
  // The method's settings (a plan's recorded ones under the command line's), resolved once.
  quant::MethodOptions method;
  std::optional<calib::Calibration> cal;
  if (plan) {
    method = method_options(o.method, plan->method, &*plan);
    cal = method_calibration(o.method, method.method, o.model, &*plan);
  }
  // The reference: --reference, else MODEL itself unquantized when it was quantized here and
  // something needs it (KL, or MMLU flips without saved reference predictions).
  const bool need_ref =
      (o.kld || (!o.mmlu.empty() && !in.ref_predictions)) && (!o.reference.empty() || quantize);
  const model::MemoryNeeds needs =
      eval_needs(o, plan, method, cal, config, in, need_ref && !o.reference.empty(), ctx);
  const model::MemoryPlan residency =
      plan_residency(ctx, o.compute, needs, "--batch, --ctx or --mmlu's prompt length");
  std::string described;
  auto [m, ref] = load_models(o, plan, method, cal, ctx, need_ref, residency.streamed, described);
  const std::string ref_name = o.reference.empty() ? (ref ? o.model : "") : o.reference;

  nlohmann::json j = {
      {"kldq_version", KLDQ_VERSION_STRING},
      {"model", o.model},
      {"quantization", quantize ? (o.plan.empty() ? plan->base.name() : o.plan) : ""},
      {"reference", ref_name},
      {"dtype", dtype_name(ctx.dtype)},
      {"device", ctx.device.str()},
      {"device_name", device_description(ctx.device)},
      {"batch", o.batch}};
  if (plan)
    j["method_settings"] = quant::method_json(method, cal ? cal->identity : nlohmann::json());
  j.update(eval::memory_report(m));
  device_synchronize(ctx.device);
  reset_peak_allocated_bytes(ctx.device);
  if (!o.ppl.empty()) {
    log::info("eval {}: perplexity ({}), {} tokens of {}, {} windows of {}", described,
              eval::ppl_protocol_name(in.ppl.protocol), in.tokens.size(), o.ppl, in.windows.size(),
              in.ppl.ctx);
    const model::Decoder* r = o.kld ? &*ref : nullptr;
    if (ctx.device.is_cuda()) {
      // Warm-up on the first window, not timed: CUDA loads kernels lazily and cuBLAS picks
      // algorithms on first use, a one-time cost per process that the rate should not include.
      eval::score_windows(m, r, in.tokens, {in.windows.front()}, in.ppl);
      device_synchronize(ctx.device);
    }
    const auto t = Clock::now();
    const eval::TokenScores s = eval::score_windows(m, r, in.tokens, in.windows, in.ppl);
    device_synchronize(ctx.device);
    const double secs = seconds_since(t);
    j.update(eval::ppl_summary(s.nll, s.windows));
    if (o.kld) {
      const auto r = eval::ppl_summary(s.nll_ref, s.windows, "_ref");
      j["ppl_ref"] = r["ppl_ref"], j["nll_mean_ref"] = r["nll_mean_ref"];
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
  std::string predictions;
  if (!o.mmlu.empty()) {
    log::info("eval {}: MMLU {} on {} questions of {}", described, in.mmlu_tag, in.items.size(),
              o.mmlu);
    const auto t = Clock::now();
    const auto preds =
        eval::score_mmlu(m, *tokenizer, in.mmlu_data, in.items, in.answers, in.mmlu, "MMLU");
    j.update(eval::mmlu_summary(preds));
    if (!in.ref_predictions && ref)
      in.ref_predictions = eval::score_mmlu(*ref, *tokenizer, in.mmlu_data, in.items, in.answers,
                                            in.mmlu, "MMLU reference");
    if (in.ref_predictions)
      j.update(eval::flip_summary(
          *in.ref_predictions, preds,
          o.reference_predictions.empty() ? "reference" : o.reference_predictions));
    device_synchronize(ctx.device);
    j["seconds_mmlu"] = seconds_since(t);
    j["mmlu_settings"] = {{"protocol", in.mmlu_tag},    {"limit", in.mmlu.limit},
                          {"max_len", in.mmlu.max_len}, {"path", o.mmlu},
                          {"sha256", in.mmlu_sha256},   {"predictions", pred_path.string()}};
    predictions = eval::predictions_jsonl(preds, in.mmlu_tag);
  }
  j["peak_cuda_bytes"] = peak_allocated_bytes(ctx.device);
  j["peak_host_bytes"] = peak_host_bytes();
  j["residency"] = residency.describe(needs);
  j["streamed_bytes"] = m.streamed_bytes() + (ref ? ref->streamed_bytes() : 0);
  log::debug("eval: {} copied host-to-device for streamed blocks; peak host memory {}",
             model::gib(j["streamed_bytes"].get<uint64_t>()), model::gib(peak_host_bytes()));
  j["seconds"] = seconds_since(t0);
  if (!predictions.empty()) io::write_file_atomic(pred_path, predictions);
  io::write_file_atomic(out, j.dump(2) + "\n");

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
    line += fmt::format("MMLU {} accuracy {:.4f} over {} questions", in.mmlu_tag,
                        j["mmlu_acc"].get<double>(), j["mmlu_n"].get<int64_t>());
    if (j.contains("flip_rate"))
      line += fmt::format(" (reference {:.4f}); flips {:.4f}, answer changes {:.4f}",
                          j["mmlu_acc_ref"].get<double>(), j["flip_rate"].get<double>(),
                          j["answer_change_rate"].get<double>());
    line += "\n";
  }
  std::cout << line
            << fmt::format("weights {} bytes, {:.3f} bits per weight (linear layers)\n",
                           j["weight_bytes"].get<uint64_t>(), j["bits_per_weight"].get<double>());
  return 0;
}

void register_eval(CLI::App& app, Action& action) {
  auto opts = std::make_shared<EvalCliOptions>();
  auto* sub = app.add_subcommand("eval", "perplexity, KL, MMLU and flips against a reference");
  sub->add_option("MODEL", opts->model, "checkpoint or quantized checkpoint")->required();
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
  sub->add_option("--mmlu", opts->mmlu, "MMLU directory (dev/, test/ CSVs) or JSONL file");
  sub->add_option("--mmlu-protocol", opts->mmlu_protocol, "5shot (default) or chat0shot");
  sub->add_option("--shots", opts->shots, "dev examples per prompt (5shot protocol; default 5)")
      ->check(CLI::Range(0, 64));
  sub->add_option("--mmlu-limit", opts->mmlu_limit, "first N test questions in subject order")
      ->check(CLI::PositiveNumber);
  sub->add_option("--predictions", opts->predictions,
                  "per-question MMLU predictions, JSONL (default: beside -o)");
  sub->add_option("--reference-predictions", opts->reference_predictions,
                  "flips against a previous run's predictions instead of running the reference");
  sub->add_option("--batch", opts->batch, "windows or prompts per forward (default 1)")
      ->check(CLI::PositiveNumber);
  sub->add_option("-o,--output", opts->out, "metrics JSON")->required();
  add_method_options(*sub, opts->method, true);
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts, sub] {
    note_method_options(*sub, opts->method);
    action = [opts] { return run_eval(*opts); };
  });
}

}  // namespace kldq::cli
