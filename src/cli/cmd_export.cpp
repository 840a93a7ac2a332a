// `kldq export (QUANTIZED | MODEL (--plan PLAN | --base FORMAT ...) [method options]) --to
// compressed-tensors|gguf -o OUT [--force]`: writes a checkpoint other tools load. Given a plan or
// a base, MODEL is quantized first (as `kldq quantize` would) into a temporary beside OUT, removed
// afterwards. docs/FORMATS.md, "Export".
#include <fmt/format.h>

#include <iostream>

#include "commands.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/export/export.hpp"
#include "kldq/model/residency.hpp"

namespace kldq::cli {
namespace fs = std::filesystem;

Printed run_export_cmd(const ExportCliOptions& o) {
  const QuantizeCliOptions& q = o.source;
  const exporting::Target target = exporting::parse_target(o.to, "--to");
  const bool quantize_first = !q.plan.empty() || !q.base.empty();
  if (!quantize_first && (!q.keep.empty() || !q.method.method.empty() || !q.method.calib.empty()))
    throw ConfigError(
        "--keep, --method, --calib: apply when quantizing MODEL with --plan or --base");
  // The output is checked before any work (and again when it is written).
  const std::vector<fs::path> inputs = {q.model, q.plan, q.method.calib};
  fs::path out;
  if (target == exporting::Target::GGUF) {
    out = file_output(q.out, "-o", inputs);
    if (fs::exists(out) && !q.force)
      throw ConfigError(fmt::format("-o: {} exists (--force replaces it)", out.string()));
  } else {
    out = directory_output(q.out, "-o", q.force, inputs);
  }
  if (quantize_first) {  // what the export would refuse, before quantizing (GPTQ takes minutes)
    const quant::Plan plan = plan_from(q);
    const model::ModelConfig config = model::load_config(fs::path(q.model) / "config.json");
    exporting::check_exportable(target, config, plan.resolve(model::linear_ids(config)),
                                q.plan.empty() ? "--base" : "--plan " + q.plan);
  }
  std::optional<TempOutput> staging;
  fs::path source = q.model;
  if (quantize_first) {
    staging.emplace(out.parent_path() / (out.filename().string() + ".source"),
                    TempOutput::Kind::DIRECTORY);
    QuantizeCliOptions qo = q;
    qo.out = (staging->path() / "quantized").string();
    qo.force = false;
    log::debug("{}", run_quantize_cmd(qo).out);
    source = qo.out;
  }
  const exporting::Source src(source);
  exporting::ExportOptions options;
  options.force = q.force;
  if (quantize_first) options.original = q.model;
  options.name = fs::absolute(q.model).lexically_normal().filename().string();
  const exporting::ExportReport r = target == exporting::Target::GGUF
                                        ? exporting::export_gguf(src, out, options)
                                        : exporting::export_compressed_tensors(src, out, options);
  if (!r.folded.empty())
    log::info(
        "AWQ input scales of {} layer(s) folded into the norms and rows before them (-v "
        "lists them; docs/FORMATS.md, \"Export\")",
        r.folded.size());
  for (const auto& [layer, into] : r.folded) log::debug("{}: input scale folded {}", layer, into);
  for (const auto& [layer, what] : r.requantized) log::warn("{}: re-quantized, {}", layer, what);
  return {fmt::format("exported {} to {} ({}): {} quantized layer(s) exact, {} re-quantized, {}",
                      q.model, exporting::target_name(target), out.string(), r.exact_layers,
                      r.requantized.size(), model::gib(r.bytes)) +
              "\n",
          ""};
}

void register_export(CLI::App& app, Action& action) {
  auto opts = std::make_shared<ExportCliOptions>();
  QuantizeCliOptions& q = opts->source;
  auto* sub =
      app.add_subcommand("export", "write a checkpoint vLLM, transformers or llama.cpp load");
  sub->add_option(
         "MODEL", q.model,
         "a quantized checkpoint (kldq quantize), or a model to quantize with --plan/--base")
      ->required();
  sub->add_option("--to", opts->to, "compressed-tensors (a directory) or gguf (one file)")
      ->required();
  sub->add_option("--plan", q.plan, "plan JSON: quantize MODEL with it first");
  sub->add_option("--base", q.base, "quantize every decoder linear layer of MODEL to FORMAT first");
  sub->add_option("--keep", q.keep, "with --base: layers kept in bf16 (glob or re:REGEX)");
  sub->add_option("-o,--output", q.out, "output directory (compressed-tensors) or file (gguf)")
      ->required();
  sub->add_flag("--force", q.force,
                "replace an existing output (a directory only if kldq wrote it; any GGUF file)");
  add_method_options(*sub, q.method, true);
  add_compute_options(*sub, q.compute);
  sub->callback([&action, opts] { action = [opts] { return print(run_export_cmd(*opts)); }; });
}

}  // namespace kldq::cli
