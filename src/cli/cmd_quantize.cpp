// `kldq quantize MODEL (--base FORMAT [--group G] [--keep PATTERN ...] | --plan PLAN)
// [--method rtn|hqq|gptq|awq [--calib FILE --samples N --seq-len T --seed S --damp D --act-order]]
// -o OUT`: writes a quantized checkpoint (docs/FORMATS.md, "Quantized checkpoints").
#include "common.hpp"
#include "kldq/quant/task.hpp"

namespace kldq::cli {

void register_quantize(CLI::App& app, Action& action) {
  auto opts = std::make_shared<quant::QuantizeRequest>();
  auto* sub = app.add_subcommand("quantize", "write a quantized checkpoint");
  sub->add_option("MODEL", opts->model, "checkpoint directory")->required();
  auto* base = sub->add_option("--base", opts->base,
                               "format of every decoder linear layer (nf4, int4_g128, ...)");
  auto* keep =
      sub->add_option("--keep", opts->keep,
                      "layers kept in bf16: glob over HF layer ids, or re:REGEX (repeatable)");
  sub->add_option("--plan", opts->plan, "plan JSON (method, base, overrides) instead of --base")
      ->excludes(base)
      ->excludes(keep);
  sub->add_option("-o,--output", opts->out, "output checkpoint directory")->required();
  sub->add_flag("--force", opts->force, "replace an existing checkpoint at the output");
  add_method_options(*sub, opts->method, true);
  add_compute_options(*sub, opts->compute);
  sub->callback(
      [&action, opts] { action = [opts] { return print(quant::quantize_checkpoint(*opts)); }; });
}

}  // namespace kldq::cli
