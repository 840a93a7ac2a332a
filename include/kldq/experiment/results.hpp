// The results of an experiment run (docs/EXPERIMENTS.md, "Results"): one record per finished
// sweep point in runs.jsonl (runs.shard-I-of-N.jsonl for a shard), merged across shards, and the
// summary table they make (summary.csv, the markdown and JSON of `kldq report`, `kldq run`'s
// final table).
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "kldq/eval/metrics.hpp"
#include "kldq/experiment/config.hpp"

namespace kldq::experiment {

// A run record's metrics from its point's evaluation (metrics.json; absent where not measured):
// weight_bytes, weight_gib, bits_per_weight, ppl, ppl_ref, kl_mean, kl_stderr, top1_agree,
// plan_predicted_kl, mmlu_acc, mmlu_acc_ref, flip_rate, answer_change_rate, seconds, and the
// zero-shot tasks' and decode speed's columns (task_record_metrics, speed_record_metrics).
nlohmann::json record_metrics(const eval::Metrics& metrics);

// A short name of a point: "nf4 rtn linear restore-top 10% by params", "fp8_e4m3 uniform".
std::string point_label(const Point& p);
// A stage's name in logs and the dry run: "nf4/rtn linear quantize-one" (a profile), "point 3
// (nf4 rtn linear restore-top 10% by params)" (a plan or evaluation), "bf16 model" (reference).
std::string stage_label(const Stage& s, const Experiment& e);

// The runs file of a shard: runs.jsonl for the whole sweep, or
// runs.shard-i-of-n.jsonl, so shards that share an output directory never write the same file.
std::string runs_file_name(const Shard& shard);

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

// The summary table's columns, in order; summary.csv adds the zero-shot tasks' columns
// (task_columns) when the records have any.
extern const std::vector<std::string> kSummaryColumns;
// A run record's zero-shot task fields from an evaluation's metrics ("tasks"): <task>_acc,
// <task>_acc_norm, <task>_flip_rate, task_names, and tasks_mean (the mean over tasks of acc_norm
// where the task defines it, else acc) with tasks_mean_ref (the reference's). Empty without tasks.
nlohmann::json task_record_metrics(const nlohmann::json& metrics);
// A run record's decode-speed fields from an evaluation's metrics ("speed", eval --speed):
// prefill_tps_b<N> and decode_tps_b<N> (tokens/s at batch N). Empty without speed.
nlohmann::json speed_record_metrics(const nlohmann::json& metrics);
// The speed columns summary.csv adds where some record has them.
extern const std::vector<std::string> kSpeedColumns;
// The task columns present in `records` (those some record has): built-in tasks in their
// order, then others by name.
std::vector<std::string> task_columns(const std::vector<nlohmann::json>& records);
std::string summary_csv(const std::vector<nlohmann::json>& records);
// A markdown table of the main columns, numbers rounded for reading.
std::string summary_markdown(const std::vector<nlohmann::json>& records);

}  // namespace kldq::experiment
