// `kldq synth --shape NAME -o DIR [--seed N]`: a random-weight checkpoint of a Qwen2.5 shape.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common.hpp"
#include "kldq/core/log.hpp"
#include "kldq/model/synth.hpp"

namespace kldq::cli {
namespace {

struct SynthCliOptions {
  std::string shape;
  std::string out;
  uint64_t seed = 0;
  std::string dtype = "bf16";
  std::string device = "cpu";
  bool force = false;
};

int run_synth(const SynthCliOptions& o) {
  const model::ModelConfig config = model::synth_config(o.shape);
  model::SynthOptions so;
  so.seed = o.seed;
  so.dtype = parse_dtype(o.dtype);
  so.device = parse_device(o.device);
  so.force = o.force;
  log::info("synth {}: {} parameters, {} -> {}", o.shape, config.num_parameters(), o.dtype, o.out);
  model::synth_checkpoint(config, o.out, so);
  log::info("wrote {}", o.out);
  return 0;
}

}  // namespace

void register_synth(CLI::App& app, Action& action) {
  auto opts = std::make_shared<SynthCliOptions>();
  auto* sub = app.add_subcommand("synth", "write a random-weight checkpoint of a Qwen2.5 shape");
  sub->add_option("--shape", opts->shape,
                  fmt::format("architecture: {}", fmt::join(model::synth_shape_names(), ", ")))
      ->required();
  sub->add_option("-o,--output", opts->out, "output checkpoint directory")->required();
  sub->add_option("--seed", opts->seed, "random seed")->capture_default_str();
  sub->add_option("--dtype", opts->dtype, "weight dtype: bf16, fp16 or fp32")
      ->capture_default_str();
  sub->add_option("--device", opts->device,
                  "where random numbers are drawn: cpu or cuda (faster; other values)")
      ->capture_default_str();
  sub->add_flag("--force", opts->force, "replace an existing output directory");
  sub->callback([&action, opts] { action = [opts] { return run_synth(*opts); }; });
}

}  // namespace kldq::cli
