// The quantize task (quant/task.hpp): the output checked first, the plan and method resolved,
// calibration windows and a decoder for GPTQ/AWQ, then the checkpoint streamed out.
#include "kldq/quant/task.hpp"

#include <fmt/format.h>

#include "kldq/core/clock.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/model/layout.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::quant {

Plan plan_of(const QuantizeRequest& o) {
  if (!o.plan.empty() && (!o.base.empty() || !o.keep.empty()))
    throw ConfigError("--plan: give either --plan or --base/--keep, not both");
  if (o.plan.empty() && o.base.empty()) throw ConfigError("--base: required (or give --plan)");
  Plan p = *resolve_plan(o.model, o.base, o.plan, o.method);
  // Kept layers are restored to bf16, the precision of the released Qwen2.5 checkpoints.
  for (const auto& k : o.keep)
    p.overrides.push_back({LayerSelector(k, "--keep"), formats::FormatSpec::parse("bf16")});
  return p;
}

std::string quantize_checkpoint(const QuantizeRequest& o) {
  // The output is checked before the calibration, which may take minutes (again when written).
  directory_output(o.out, "-o", o.force, {o.model, o.plan, o.method.calib});
  io::require_checkpoint_dir(o.model);
  const Plan plan = plan_of(o);
  // A plan's recorded settings (quantization.json, `kldq plan` from a gptq/awq profile) are the
  // defaults: --plan re-fits the layers it describes.
  const MethodOptions method = resolve_method(o.method, plan.method, &plan);
  log::info("quantize {}: {}/{} with {} override(s) -> {}", o.model, method_name(plan.method),
            plan.base.name(), plan.overrides.size(), o.out);
  if (method.method == Method::RTN && (!o.compute.device.empty() || !o.compute.dtype.empty()))
    log::warn("--device, --dtype: not used; rtn quantizes as it streams the checkpoint on the CPU");
  if (method.method == Method::HQQ && !o.compute.dtype.empty())
    log::warn("--dtype: not used; hqq fits each weight in fp32");
  // HQQ fits each weight on the device as the checkpoint streams (one layer there at a time).
  const c10::Device fit_device =
      method.method == Method::HQQ ? model::context_from(o.compute).device : c10::Device(c10::kCPU);
  CalibratedSource calibrated;
  std::optional<model::Decoder> decoder;
  // Checked for every method: calibration options given to rtn are an error.
  const auto cal = resolve_calibration(o.method, method.method, o.model, &plan);
  if (cal) {
    const RunContext ctx = model::context_from(o.compute);
    const model::ModelConfig config =
        model::load_config(std::filesystem::path(o.model) / "config.json");
    const model::MemoryNeeds needs =
        memory_needs(model::Decoder::weight_needs(o.model, ctx.dtype), config,
                     plan.resolve(model::linear_ids(config)), method, cal->ids.size(0),
                     cal->ids.size(1), ctx.dtype);
    const model::MemoryPlan residency =
        model::plan_residency(ctx, o.compute, needs, "--samples or --seq-len");
    decoder = model::Decoder::load(o.model, ctx.device, ctx.dtype, residency.streamed);
    calibrated = {&*decoder, cal->ids, cal->identity};
  }
  const auto t0 = Clock::now();
  write_quantized_checkpoint(o.model, o.out, plan, method, calibrated,
                             {.force = o.force, .device = fit_device});
  const double secs = seconds_since(t0);
  std::string line = fmt::format("quantized {} ({}) in {:.1f} s -> {}", o.model,
                                 method_name(method.method), secs, o.out);
  if (decoder && decoder->device().is_cuda())
    line += fmt::format(", peak CUDA memory {:.2f} GiB",
                        double(peak_allocated_bytes(decoder->device())) / double(1ULL << 30));
  if (decoder && decoder->streamed_bytes())
    line += fmt::format(", {} streamed host-to-device", model::gib(decoder->streamed_bytes()));
  line += fmt::format(", peak host memory {}", model::gib(peak_host_bytes()));
  return line + "\n";
}

}  // namespace kldq::quant
