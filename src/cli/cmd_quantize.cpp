// `kldq quantize MODEL (--base FORMAT [--keep PATTERN ...] | --plan PLAN) [--method rtn] -o OUT`:
// writes a quantized checkpoint (docs/FORMATS.md, "Quantized checkpoints").
#include <fmt/format.h>

#include "common.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::cli {
namespace {

struct QuantizeOptions {
  std::string model, out, base, method, plan;
  std::vector<std::string> keep;
  bool force = false;
};

quant::Plan plan_from(const QuantizeOptions& o) {
  if (!o.plan.empty()) {
    if (!o.base.empty() || !o.keep.empty())
      throw ConfigError("--plan: give either --plan or --base/--keep, not both");
    quant::Plan p = read_plan_for(o.plan, o.model);
    if (!o.method.empty()) p.method = o.method;
    return p;
  }
  if (o.base.empty()) throw ConfigError("--base: required (or give --plan)");
  quant::Plan p;
  p.method = o.method.empty() ? "rtn" : o.method;
  p.base = formats::FormatSpec::parse(o.base, "--base");
  // Kept layers are restored to bf16, the precision of the released Qwen2.5 checkpoints.
  for (const auto& k : o.keep)
    p.overrides.push_back({quant::LayerSelector(k, "--keep"), formats::FormatSpec::parse("bf16")});
  return p;
}

int run_quantize(const QuantizeOptions& o) {
  const quant::Plan plan = plan_from(o);
  auto quantizer = quant::make_quantizer(plan.method);
  log::info("quantize {}: {}/{} with {} override(s) -> {}", o.model, plan.method, plan.base.name(),
            plan.overrides.size(), o.out);
  quant::write_quantized_checkpoint(o.model, o.out, plan, *quantizer, {.force = o.force});
  log::info("wrote {}", o.out);
  return 0;
}

}  // namespace

void register_quantize(CLI::App& app, Action& action) {
  auto opts = std::make_shared<QuantizeOptions>();
  auto* sub = app.add_subcommand("quantize", "write a quantized checkpoint");
  sub->add_option("MODEL", opts->model, "checkpoint directory")->required();
  sub->add_option("--base", opts->base,
                  "format of every decoder linear layer (nf4, int4_g128, ...)");
  sub->add_option("--keep", opts->keep,
                  "layers kept in bf16: glob over HF layer ids, or re:REGEX (repeatable)");
  sub->add_option("--plan", opts->plan, "plan JSON (method, base, overrides) instead of --base");
  sub->add_option("--method", opts->method, "rtn (default); gptq and awq are not built yet");
  sub->add_option("-o,--output", opts->out, "output checkpoint directory")->required();
  sub->add_flag("--force", opts->force, "replace an existing checkpoint at the output");
  sub->callback([&action, opts] { action = [opts] { return run_quantize(*opts); }; });
}

}  // namespace kldq::cli
