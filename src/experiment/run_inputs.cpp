// The inputs of an experiment's stages, checked before any work (run_inputs.hpp).
#include "run_inputs.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "kldq/calib/calibration.hpp"
#include "kldq/core/error.hpp"
#include "kldq/eval/speed.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/config.hpp"
#include "kldq/plan/planner.hpp"
#include "kldq/quant/method.hpp"

namespace kldq::experiment {
namespace {

namespace fs = std::filesystem;

// What a stage would find wrong only after earlier stages ran, checked per model before any
// work: the calibration windows against the model's positions and its tokenized calibration
// text, an explicit evaluation context against its positions.
void check_models(const Experiment& e, bool calibrated) {
  for (const auto& m : e.models) {
    const fs::path dir(m);
    if (!fs::is_regular_file(dir / "config.json"))
      throw ConfigError(
          fmt::format("{}: models: {} is not a checkpoint (no config.json)", e.path, m));
    const model::ModelConfig c = model::load_config(dir / "config.json");
    if (calibrated && e.seq_len > c.max_position_embeddings)
      throw ConfigError(fmt::format("{}: calibration.seq_len: {} exceeds {}'s {} positions", e.path,
                                    e.seq_len, m, c.max_position_embeddings));
    if (e.eval.speed)
      eval::check_speed_protocol(c, eval::SpeedProtocol{},
                                 fmt::format("{}: eval.speed ({})", e.path, m));
    if (e.eval.ctx > c.max_position_embeddings)
      throw ConfigError(fmt::format("{}: eval.ctx: {} exceeds {}'s {} positions", e.path,
                                    e.eval.ctx, m, c.max_position_embeddings));
    if (!calibrated) continue;
    const auto tokenizer = io::Tokenizer::load(dir);
    try {
      calib::make_calibration({e.calib, e.samples, e.seq_len, e.calib_seed}, *tokenizer);
    } catch (const ConfigError& x) {
      throw ConfigError(fmt::format("{}: calibration (model {}): {}", e.path, m, x.what()));
    }
  }
}

}  // namespace

void check_inputs(const Experiment& e, const std::vector<size_t>& points) {
  auto need = [&](const std::string& path, const char* key, bool dir_ok) {
    std::error_code ec;
    if (path.empty()) return;
    if (!fs::is_regular_file(path, ec) && !(dir_ok && fs::is_directory(path, ec)))
      throw ConfigError(fmt::format("{}: {}: no such file {}", e.path, key, path));
  };
  need(e.ppl, "data.ppl", false);
  need(e.mmlu, "data.mmlu", true);
  need(e.tasks_dir, "data.tasks", true);
  if (!e.eval.tasks.empty()) try {
      (void)eval::parse_task_list(fmt::format("{}", fmt::join(e.eval.tasks, ",")), e.tasks_dir,
                                  "eval.tasks");
    } catch (const ConfigError& err) {
      throw ConfigError(fmt::format("{}: {}", e.path, err.what()));
    }
  bool profiles = false;
  for (size_t i : points)
    profiles |= e.points[i].planner != plan::Strategy::UNIFORM ||
                quant::needs_calibration(e.points[i].method);
  if (profiles && e.calib.empty())
    throw ConfigError(fmt::format(
        "{}: data.calib: needed by the sweep's profiles and gptq/awq quantization", e.path));
  if (profiles) need(e.calib, "data.calib", false);
  if (e.ppl.empty() && e.mmlu.empty() && e.tasks_dir.empty())
    throw ConfigError(
        fmt::format("{}: data: give ppl, mmlu and/or tasks (nothing to evaluate)", e.path));
  check_models(e, profiles);
}

}  // namespace kldq::experiment
