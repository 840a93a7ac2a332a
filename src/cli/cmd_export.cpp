// `kldq export (QUANTIZED | MODEL (--plan PLAN | --base FORMAT ...) [method options]) --to
// compressed-tensors|gguf -o OUT [--force]`: writes a checkpoint other tools load. Given a plan or
// a base, MODEL is quantized first (as `kldq quantize` would) into a temporary beside OUT, removed
// afterwards. docs/FORMATS.md, "Export".
#include "common.hpp"
#include "kldq/export/task.hpp"

namespace kldq::cli {

void register_export(CLI::App& app, Action& action) {
  auto opts = std::make_shared<exporting::ExportRequest>();
  quant::QuantizeRequest& q = opts->source;
  auto* sub =
      app.add_subcommand("export", "write a checkpoint vLLM, transformers or llama.cpp load");
  sub->add_option(
         "MODEL", q.model,
         "a quantized checkpoint (kldq quantize), or a model to quantize with --plan/--base")
      ->required();
  sub->add_option("--to", opts->to, "compressed-tensors (a directory) or gguf (one file)")
      ->required();
  auto* plan = sub->add_option("--plan", q.plan, "plan JSON: quantize MODEL with it first");
  sub->add_option("--base", q.base, "quantize every decoder linear layer of MODEL to FORMAT first")
      ->excludes(plan);
  sub->add_option("--keep", q.keep, "with --base: layers kept in bf16 (glob or re:REGEX)")
      ->excludes(plan);
  sub->add_option("-o,--output", q.out, "output directory (compressed-tensors) or file (gguf)")
      ->required();
  sub->add_flag("--force", q.force,
                "replace an existing output (a directory only if kldq wrote it; any GGUF file)");
  add_method_options(*sub, q.method, true);
  add_compute_options(*sub, q.compute);
  sub->callback(
      [&action, opts] { action = [opts] { return print(exporting::export_checkpoint(*opts)); }; });
}

}  // namespace kldq::cli
