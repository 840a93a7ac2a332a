// The results of an experiment run (docs/EXPERIMENTS.md, "Results"): one record per finished
// sweep point in runs.jsonl (runs.shard-I-of-N.jsonl for a shard), merged across shards, and the
// summary table they make (summary.csv, the markdown and JSON of `kldq report`, `kldq run`'s
// final table).
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "kldq/experiment/config.hpp"

namespace kldq::experiment {

// The metrics a record copies from a point's eval metrics.json (absent ones are left out).
extern const std::vector<std::string> kRecordMetrics;

// A short name of a point: "nf4 rtn linear restore-top 10% by params", "fp8_e4m3 uniform".
std::string point_label(const Point& p);
// A stage's name in logs and the dry run: "nf4/rtn linear quantize-one" (a profile), "point 3
// (nf4 rtn linear restore-top 10% by params)" (a plan or evaluation), "bf16 model" (reference).
std::string stage_label(const Stage& s, const Experiment& e);

// The runs file of a shard ("" or "i/n", already checked by shard_points): runs.jsonl, or
// runs.shard-i-of-n.jsonl, so shards that share an output directory never write the same file.
std::string runs_file_name(const std::string& shard);

// The records of one runs file, in order; none when it does not exist. IoError naming the file
// and line when a line is not a JSON object (the file is only ever replaced whole, so a torn
// line means it was edited by hand or damaged).
std::vector<nlohmann::json> read_runs(const std::filesystem::path& file);
// Replaces `file` with `records`, one JSON object per line, atomically (temp file and rename).
void write_runs(const std::filesystem::path& file, const std::vector<nlohmann::json>& records);
// Every runs*.jsonl of `dir` merged: the records of the configuration its manifest.json names
// (their eval stages' keys; records of an earlier configuration are left out), one per model and
// eval key (the last one read), ordered by model (in order of first appearance) then point.
// IoError when there is no runs file.
std::vector<nlohmann::json> read_all_runs(const std::filesystem::path& dir);

// The summary table's columns, in order.
extern const std::vector<std::string> kSummaryColumns;
std::string summary_csv(const std::vector<nlohmann::json>& records);
// A markdown table of the main columns, numbers rounded for reading.
std::string summary_markdown(const std::vector<nlohmann::json>& records);

}  // namespace kldq::experiment
