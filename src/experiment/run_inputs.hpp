// The checks `kldq run` makes before any stage runs (private to the experiment module).
#pragma once

#include <vector>

#include "kldq/experiment/config.hpp"

namespace kldq::experiment {

// Everything the stages of `points` read, checked before any work (ConfigError naming the
// config key): data files, task names, calibration text where profiles or gptq/awq need it, and
// each model's context and tokenized calibration windows.
void check_inputs(const Experiment& e, const std::vector<size_t>& points);

}  // namespace kldq::experiment
