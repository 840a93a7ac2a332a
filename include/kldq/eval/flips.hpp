// Per-question MMLU predictions as JSONL (so later runs compute flips without re-running the
// reference) and answer flips against a reference's predictions (docs/PROTOCOLS.md, "Flips").
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "kldq/eval/mmlu.hpp"
#include "kldq/io/document.hpp"

namespace kldq::eval {

// One JSON object per line: subject, index, answer and pred (letters), correct, logprobs of
// A-D, truncated, and `protocol` ("5shot:5", "chat0shot:0").
std::string predictions_jsonl(const std::vector<MmluPrediction>& preds,
                              const std::string& protocol);
// Reads a file written by predictions_jsonl; IoError naming the file and line when malformed.
// `protocol`: the protocol of the rows.
std::vector<MmluPrediction> read_predictions(const std::filesystem::path& path,
                                             std::string* protocol);
// The same from text; errors name `where` and the line.
std::vector<MmluPrediction> parse_predictions(const std::string& text, const std::string& where,
                                              std::string* protocol);

// One question's gold answer and prediction, as flips compare them.
struct Answered {
  int answer = 0, pred = 0;
};
// flip_rate (correctness changed), answer_change_rate (prediction changed), c2w and w2c counts,
// each rate with its 95 % Wilson interval (`*_ci`: [low, high]), and the reference's accuracy.
struct Flips {
  double flip_rate = 0;
  std::pair<double, double> flip_rate_ci;
  double answer_change_rate = 0;
  std::pair<double, double> answer_change_rate_ci;
  int64_t c2w = 0;
  std::pair<double, double> c2w_rate_ci;
  int64_t w2c = 0;
  std::pair<double, double> w2c_rate_ci;
  double acc_ref = 0;
};
// The keys above with the reference's accuracy under `acc_ref_key` (MMLU's mmlu_acc_ref, a
// task's acc_ref or acc_norm_ref), as metrics.json holds them.
nlohmann::json to_json(const Flips& f, const std::string& acc_ref_key);
Flips flips_from_json(const io::Doc& d, const std::string& acc_ref_key);
// `ref` and `m` are the same questions in the same order.
Flips flip_rates(const std::vector<Answered>& ref, const std::vector<Answered>& m);

// flip_rates of MMLU predictions. ConfigError naming `what` when the two lists are not the same
// questions in the same order with the same answers.
Flips flip_summary(const std::vector<MmluPrediction>& reference,
                   const std::vector<MmluPrediction>& model, const std::string& what);

}  // namespace kldq::eval
