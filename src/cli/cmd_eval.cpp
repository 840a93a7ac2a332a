// `kldq eval MODEL [--reference REF] [--base FORMAT | --plan PLAN] --ppl FILE [--ctx N] [--kld]
// [--batch N] -o metrics.json`: perplexity (gptq protocol) of MODEL, quantized in memory when
// asked, and the KL divergence of its next-token distributions from the reference's.
#include <fmt/format.h>

#include <iostream>

#include "common.hpp"
#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/log.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/io/corpus.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::cli {
namespace {

struct EvalCliOptions {
  std::string model, reference, base, plan, ppl, protocol = "gptq", out;
  int64_t ctx = 2048, batch = 1;
  bool kld = false;
  ComputeOptions compute;
};

int run_eval(const EvalCliOptions& o) {
  if (o.protocol != "gptq")
    throw UnsupportedError(fmt::format("--ppl-protocol {}: not built yet (gptq is)", o.protocol));
  if (o.ppl.empty()) throw ConfigError("--ppl: required (the only evaluation built so far)");
  if (!o.base.empty() && !o.plan.empty()) throw ConfigError("--base and --plan exclude each other");
  const std::filesystem::path out = output_path(o.out, "-o");
  const RunContext ctx = context_from(o.compute);
  model::Decoder m = model::Decoder::load(o.model, ctx.device, ctx.dtype);
  const bool quantize = !o.base.empty() || !o.plan.empty();
  std::string described = o.model;
  if (quantize) {
    quant::Plan plan;
    if (!o.plan.empty()) {
      plan = quant::Plan::from_json(io::read_json_file(o.plan, true), o.plan);
    } else {
      plan.base = formats::FormatSpec::parse(o.base, "--base");
    }
    auto quantizer = quant::make_quantizer(plan.method);
    quant::quantize_decoder(m, plan.resolve(m.linear_ids()), *quantizer);
    described += " (" + plan.method + "/" + plan.base.name() + " in memory)";
  }
  // The reference: --reference, else MODEL itself unquantized when it was quantized here.
  std::optional<model::Decoder> ref;
  if (!o.reference.empty())
    ref = model::Decoder::load(o.reference, ctx.device, ctx.dtype);
  else if (o.kld && quantize)
    ref = model::Decoder::load(o.model, ctx.device, ctx.dtype);
  if (o.kld && !ref)
    throw ConfigError("--kld: needs --reference (or --base/--plan, which use MODEL as reference)");

  const auto tokenizer = io::Tokenizer::load(o.reference.empty() ? o.model : o.reference);
  const std::vector<int32_t> tokens = tokenizer->encode(io::read_corpus(o.ppl), false);
  eval::PplOptions po;
  po.ctx = std::min<int64_t>(o.ctx, m.config().max_position_embeddings);
  po.batch = o.batch;
  if (static_cast<int64_t>(tokens.size()) < po.ctx)
    throw ConfigError(fmt::format("--ppl: {} has {} tokens, fewer than one window of {}", o.ppl,
                                  tokens.size(), po.ctx));
  log::info("eval {}: {} tokens of {}, windows of {}", described, tokens.size(), o.ppl, po.ctx);
  const eval::TokenScores s = eval::score_windows(m, ref ? &*ref : nullptr, tokens, po);

  nlohmann::json j = {{"kldq_version", KLDQ_VERSION_STRING},
                      {"model", o.model},
                      {"quantization", quantize ? (o.plan.empty() ? o.base : o.plan) : ""},
                      {"reference", o.reference.empty() ? (ref ? o.model : "") : o.reference},
                      {"dtype", dtype_name(ctx.dtype)},
                      {"device", ctx.device.str()},
                      {"ppl", eval::ppl_summary(s.nll, s.windows)}};
  j["ppl"]["protocol"] = o.protocol;
  j["ppl"]["ctx"] = po.ctx;
  j["ppl"]["file"] = o.ppl;
  if (ref) {
    j["reference_ppl"] = eval::ppl_summary(s.nll_ref, s.windows);
    j["kld"] = eval::kl_summary(s);
  }
  io::write_file_atomic(out, j.dump(2) + "\n");
  std::cout << fmt::format("ppl {:.4f} over {} tokens", j["ppl"]["ppl"].get<double>(),
                           s.nll.size());
  if (ref)
    std::cout << fmt::format(" (reference {:.4f}); KL {:.6f} ± {:.6f}, same top-1 {:.4f}",
                             j["reference_ppl"]["ppl"].get<double>(),
                             j["kld"]["mean"].get<double>(), j["kld"]["stderr"].get<double>(),
                             j["kld"]["same_top1"].get<double>());
  std::cout << "\n";
  return 0;
}

}  // namespace

void register_eval(CLI::App& app, Action& action) {
  auto opts = std::make_shared<EvalCliOptions>();
  auto* sub = app.add_subcommand("eval", "perplexity and KL against a reference");
  sub->add_option("MODEL", opts->model, "checkpoint or quantized checkpoint")->required();
  sub->add_option("--reference", opts->reference, "reference checkpoint (default: MODEL)");
  sub->add_option("--base", opts->base, "quantize MODEL in memory to this format first (RTN)");
  sub->add_option("--plan", opts->plan, "quantize MODEL in memory with this plan first");
  sub->add_option("--ppl", opts->ppl, "text file (whole) or JSONL (rows' \"text\" joined)");
  sub->add_option("--ppl-protocol", opts->protocol, "gptq (default)");
  sub->add_option("--ctx", opts->ctx, "window length (default 2048, capped by the model)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  sub->add_option("--batch", opts->batch, "windows per forward (default 1)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--kld", opts->kld, "KL divergence against the reference, per token");
  sub->add_option("-o,--output", opts->out, "metrics JSON")->required();
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return run_eval(*opts); }; });
}

}  // namespace kldq::cli
