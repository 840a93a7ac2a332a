// `kldq quantize MODEL (--base FORMAT [--group G] [--keep PATTERN ...] | --plan PLAN)
// [--method rtn|hqq|gptq|awq [--calib FILE --samples N --seq-len T --seed S --damp D --act-order]]
// -o OUT`: writes a quantized checkpoint (docs/FORMATS.md, "Quantized checkpoints").
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "commands.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::cli {

quant::Plan plan_from(const QuantizeCliOptions& o) {
  if (!o.plan.empty()) {
    if (!o.base.empty() || !o.keep.empty())
      throw ConfigError("--plan: give either --plan or --base/--keep, not both");
    if (o.method.group) throw ConfigError("--group: applies to --base, not to --plan");
    quant::Plan p = read_plan_for(o.plan, o.model);
    if (!o.method.method.empty()) p.method = o.method.method;
    return p;
  }
  if (o.base.empty()) throw ConfigError("--base: required (or give --plan)");
  quant::Plan p;
  p.method = o.method.method.empty() ? "rtn" : o.method.method;
  p.base = base_format(o.base, o.method.group, "--base");
  // Kept layers are restored to bf16, the precision of the released Qwen2.5 checkpoints.
  for (const auto& k : o.keep)
    p.overrides.push_back({quant::LayerSelector(k, "--keep"), formats::FormatSpec::parse("bf16")});
  return p;
}

Printed run_quantize_cmd(const QuantizeCliOptions& o) {
  // The output is checked before the calibration, which may take minutes (again when written).
  directory_output(o.out, "-o", o.force, {o.model, o.plan, o.method.calib});
  require_checkpoint_dir(o.model);
  const quant::Plan plan = plan_from(o);
  // A plan's recorded settings (quantization.json, `kldq plan` from a gptq/awq profile) are the
  // defaults: --plan re-fits the layers it describes.
  const quant::MethodOptions method = method_options(o.method, plan.method, &plan);
  log::info("quantize {}: {}/{} with {} override(s) -> {}", o.model, plan.method, plan.base.name(),
            plan.overrides.size(), o.out);
  if (method.method == "rtn" && (!o.compute.device.empty() || !o.compute.dtype.empty()))
    log::warn("--device, --dtype: not used; rtn quantizes as it streams the checkpoint on the CPU");
  if (method.method == "hqq" && !o.compute.dtype.empty())
    log::warn("--dtype: not used; hqq fits each weight in fp32");
  // HQQ fits each weight on the device as the checkpoint streams (one layer there at a time).
  const c10::Device fit_device =
      method.method == "hqq" ? context_from(o.compute).device : c10::Device(c10::kCPU);
  quant::CalibratedSource calibrated;
  std::optional<model::Decoder> decoder;
  // Checked for every method: calibration options given to rtn are an error.
  const auto cal = method_calibration(o.method, method.method, o.model, &plan);
  if (cal) {
    const RunContext ctx = context_from(o.compute);
    const model::ModelConfig config =
        model::load_config(std::filesystem::path(o.model) / "config.json");
    const model::MemoryNeeds needs =
        quant::memory_needs(model::Decoder::weight_needs(o.model, ctx.dtype), config,
                            plan.resolve(model::linear_ids(config)), method, cal->ids.size(0),
                            cal->ids.size(1), ctx.dtype);
    const model::MemoryPlan residency =
        plan_residency(ctx, o.compute, needs, "--samples or --seq-len");
    decoder = model::Decoder::load(o.model, ctx.device, ctx.dtype, residency.streamed);
    calibrated = {&*decoder, cal->ids, cal->identity};
  }
  const auto t0 = std::chrono::steady_clock::now();
  quant::write_quantized_checkpoint(o.model, o.out, plan, method, calibrated,
                                    {.force = o.force, .device = fit_device});
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string line =
      fmt::format("quantized {} ({}) in {:.1f} s -> {}", o.model, method.method, secs, o.out);
  if (decoder && decoder->device().is_cuda())
    line += fmt::format(", peak CUDA memory {:.2f} GiB",
                        double(peak_allocated_bytes(decoder->device())) / double(1ULL << 30));
  if (decoder && decoder->streamed_bytes())
    line += fmt::format(", {} streamed host-to-device", model::gib(decoder->streamed_bytes()));
  line += fmt::format(", peak host memory {}", model::gib(peak_host_bytes()));
  return {line + "\n", ""};
}

void register_quantize(CLI::App& app, Action& action) {
  auto opts = std::make_shared<QuantizeCliOptions>();
  auto* sub = app.add_subcommand("quantize", "write a quantized checkpoint");
  sub->add_option("MODEL", opts->model, "checkpoint directory")->required();
  sub->add_option("--base", opts->base,
                  "format of every decoder linear layer (nf4, int4_g128, ...)");
  sub->add_option("--keep", opts->keep,
                  "layers kept in bf16: glob over HF layer ids, or re:REGEX (repeatable)");
  sub->add_option("--plan", opts->plan, "plan JSON (method, base, overrides) instead of --base");
  sub->add_option("-o,--output", opts->out, "output checkpoint directory")->required();
  sub->add_flag("--force", opts->force, "replace an existing checkpoint at the output");
  add_method_options(*sub, opts->method, true);
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return print(run_quantize_cmd(*opts)); }; });
}

}  // namespace kldq::cli
