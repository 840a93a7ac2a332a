// The steps of `evaluate` (eval/evaluate.hpp), shared by its files: the device memory of an
// evaluation, loading MODEL and its reference, reading the data, and each measurement into the
// metrics JSON.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kldq/calib/calibration.hpp"
#include "kldq/core/clock.hpp"
#include "kldq/eval/evaluate.hpp"
#include "kldq/eval/metrics.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/model/residency.hpp"
#include "kldq/quant/plan.hpp"
#include "request_inputs.hpp"

namespace kldq::eval {

// Device bytes of the evaluation: MODEL's weights (plus the packed layers of an in-memory plan;
// the reference shares MODEL's when it is MODEL), a separate --reference's weights block by
// block, and the working set of one batch of windows or prompts through both models.
model::MemoryNeeds eval_needs(const EvalRequest& o, const std::optional<quant::Plan>& plan,
                              const quant::MethodOptions& method,
                              const std::optional<calib::Calibration>& cal,
                              const model::ModelConfig& c, const Inputs& in, bool separate_ref,
                              const RunContext& ctx);

// MODEL (quantized in memory when there is a plan) and the reference when one is needed: a
// separate --reference, else MODEL itself unquantized, whose weights the quantized model shares.
std::pair<model::Decoder, std::optional<model::Decoder>> load_models(
    const EvalRequest& o, const std::optional<quant::Plan>& plan,
    const quant::MethodOptions& method, const std::optional<calib::Calibration>& cal,
    const RunContext& ctx, bool need_ref, const std::vector<bool>& streamed,
    std::string& described);

// The run's memory, streaming and time figures.
EvalFigures run_figures(const RunContext& ctx, const std::string& residency,
                        uint64_t streamed_bytes, Clock::time_point t0);

// MODEL's config with the context and vocabulary both models share (into `config`), the
// tokenizer, and every measurement's data fitted to them.
Inputs load_inputs(const EvalRequest& o, model::ModelConfig& config,
                   std::unique_ptr<io::Tokenizer>& tokenizer);

// Perplexity (and KL against `ref`, when given) over the --ppl windows into `out` (a shard's
// per-token scores into its shard_data).
void measure_ppl(const EvalRequest& o, const model::Decoder& m, const model::Decoder* r,
                 const Inputs& in, const std::optional<quant::Plan>& plan,
                 const std::string& described, Metrics& out);

// MMLU accuracy, and flips against the reference's predictions (saved, or of `ref`), into `out`;
// returns the predictions JSONL.
std::string measure_mmlu(const EvalRequest& o, const model::Decoder& m, const model::Decoder* ref,
                         const io::Tokenizer& tokenizer, Inputs& in,
                         const std::filesystem::path& predictions, const std::string& described,
                         Metrics& out);

}  // namespace kldq::eval
