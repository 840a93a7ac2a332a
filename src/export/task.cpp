// The export task (export/task.hpp): outputs and exportability checked before any work, the
// quantization first when a plan or base is given, then the target's writer.
#include "kldq/export/task.hpp"

#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/export/export.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"
#include "kldq/model/residency.hpp"

namespace kldq::exporting {
namespace fs = std::filesystem;

std::string export_checkpoint(const ExportRequest& o) {
  const quant::QuantizeRequest& q = o.source;
  const Target target = parse_target(o.to, "--to");
  const bool quantize_first = !q.plan.empty() || !q.base.empty();
  if (!quantize_first && (!q.keep.empty() || !q.method.method.empty() || !q.method.calib.empty()))
    throw ConfigError(
        "--keep, --method, --calib: apply when quantizing MODEL with --plan or --base");
  // The output is checked before any work (and again when it is written).
  const std::vector<fs::path> inputs = {q.model, q.plan, q.method.calib};
  fs::path out;
  if (target == Target::GGUF) {
    out = file_output(q.out, "-o", inputs);
    if (fs::exists(out) && !q.force)
      throw ConfigError(fmt::format("-o: {} exists (--force replaces it)", out.string()));
  } else {
    out = directory_output(q.out, "-o", q.force, inputs);
  }
  if (quantize_first) {  // what the export would refuse, before quantizing (GPTQ takes minutes)
    const quant::Plan plan = quant::plan_of(q);
    const model::ModelConfig config = model::load_config(fs::path(q.model) / "config.json");
    check_exportable(target, config, plan.resolve(model::linear_ids(config)),
                     q.plan.empty() ? "--base" : "--plan " + q.plan);
  }
  std::optional<TempOutput> staging;
  fs::path source = q.model;
  if (quantize_first) {
    staging.emplace(out.parent_path() / (out.filename().string() + ".source"),
                    TempOutput::Kind::DIRECTORY);
    quant::QuantizeRequest qo = q;
    qo.out = (staging->path() / "quantized").string();
    qo.force = false;
    log::debug("{}", quant::quantize_checkpoint(qo));
    source = qo.out;
  }
  const Source src(source);
  ExportOptions options;
  options.force = q.force;
  if (quantize_first) options.original = q.model;
  options.name = fs::absolute(q.model).lexically_normal().filename().string();
  const ExportReport r = target == Target::GGUF ? export_gguf(src, out, options)
                                                : export_compressed_tensors(src, out, options);
  if (!r.folded.empty())
    log::info(
        "AWQ input scales of {} layer(s) folded into the norms and rows before them (-v "
        "lists them; docs/FORMATS.md, \"Export\")",
        r.folded.size());
  for (const auto& [layer, into] : r.folded) log::debug("{}: input scale folded {}", layer, into);
  for (const auto& [layer, what] : r.requantized) log::warn("{}: re-quantized, {}", layer, what);
  return fmt::format("exported {} to {} ({}): {} quantized layer(s) exact, {} re-quantized, {}\n",
                     q.model, target_name(target), out.string(), r.exact_layers,
                     r.requantized.size(), model::gib(r.bytes));
}

}  // namespace kldq::exporting
