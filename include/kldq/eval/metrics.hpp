// metrics.json (`kldq eval -o`), defined once: the eval task and the shard merge write a Metrics
// (to_json), the merge, the experiment's run records and the printed summary read one back
// (metrics_from_json, through io::Doc: errors name the file and the key path). The keys are flat
// in the file; each measurement's group is there when it was measured. The zero-shot tasks' and
// the speed protocol's records are their modules' (eval/tasks.hpp, eval/speed.hpp), carried as
// written, as are a shard's per-token data (eval/merge.hpp).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kldq/eval/flips.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/io/document.hpp"

namespace kldq::eval {

// What was evaluated: the shards of one evaluation agree on it (and on the settings and the
// memory report).
struct MetricsHeader {
  std::string kldq_version, model;
  std::string quantization;  // --plan's file or --base's format; "" for MODEL as it is
  std::string reference;     // --reference, or MODEL itself unquantized; "" without
  std::string dtype, device, device_name;
  int64_t batch = 0;
  nlohmann::json method_settings;  // quant::method_json of an in-memory quantization; else null
};

// The memory report of MODEL (memory_report): exact weight bytes, by format ("other": the
// embeddings, norms, head and biases), and per decoder linear layer.
struct LayerBytes {
  std::string id, format;
  uint64_t bytes = 0;
  double bits_per_weight = 0;
};
struct MemoryReport {
  uint64_t weight_bytes = 0, weight_bytes_linear = 0;
  std::map<std::string, uint64_t> weight_bytes_by_format;
  double bits_per_weight = 0;  // 8 x linear weight bytes / linear parameters
  std::vector<LayerBytes> layers;
};

// --ppl's windows (ppl_settings), perplexity over them, and with --kld the reference's and the KL
// of the model's next-token distributions from the reference's (kl_summary).
struct PplSettings {
  std::string protocol;  // kPplProtocols' name
  int64_t ctx = 0;
  std::optional<int64_t> stride;  // sliding only
  int64_t bos = -1;
  std::string file, sha256;
};
struct KlMetrics {
  double kl_mean = 0, kl_stderr = 0, kl_median = 0, kl_p90 = 0, kl_p95 = 0, kl_p99 = 0,
         kl_p99_9 = 0, kl_max = 0, top1_agree = 0, dp_mean = 0, dp_rms = 0, ln_ppl_ratio = 0,
         ln_ppl_ratio_stderr = 0;
};
struct PplMetrics {
  double ppl = 0, nll_mean = 0;
  int64_t tokens = 0, windows = 0;
  std::optional<double> ppl_ref, nll_mean_ref;  // --kld
  std::optional<KlMetrics> kl;                  // --kld
  std::optional<double> plan_predicted_kl;      // --kld with a plan that predicts it
  double seconds_ppl = 0;
  std::optional<double> tokens_per_second;  // null in the file if not finite
  PplSettings settings;
};
// The perplexity group of scored windows (ppl_summary, and with the reference's scores
// kl_summary), without the times, settings and prediction.
PplMetrics ppl_metrics(const TokenScores& scores, bool with_reference);

// --mmlu: accuracy, per subject, and flips against the reference's answers.
struct SubjectAccuracy {
  double acc = 0;
  int64_t n = 0;
};
struct MmluSettings {
  std::string protocol;  // "5shot:5"
  int64_t limit = 0, max_len = 0;
  std::string path, sha256, predictions;
  bool shared_prefix = true;
};
struct MmluMetrics {
  double acc = 0;  // mmlu_acc, mmlu_n, mmlu_correct, mmlu_truncated, mmlu_by_subject
  int64_t n = 0, correct = 0, truncated = 0;
  std::map<std::string, SubjectAccuracy> by_subject;
  std::optional<Flips> flips;  // with mmlu_acc_ref
  double seconds_mmlu = 0;
  MmluSettings settings;
};
// The accuracy group of `predictions` (without flips, time and settings).
MmluMetrics mmlu_metrics(const std::vector<MmluPrediction>& predictions);

// --tasks: "tasks" {name: the task's record (task_summary, items/s, task_flips)}, "seconds_tasks"
// and "tasks_settings" (request_tasks.cpp).
struct TaskMetrics {
  std::map<std::string, nlohmann::json> tasks;
  double seconds_tasks = 0;
  nlohmann::json settings;
};

// "shard" (a shard's metrics): its share of the perplexity windows' batches and MMLU subjects.
struct EvalShard {
  uint64_t index = 0, count = 1;
  uint64_t windows = 0;  // of the whole run
};

// What the run measured about itself: never compared between shards (the merge sums the times
// and streamed bytes, takes the peaks' maxima and keeps the first shard's residency).
struct EvalFigures {
  double seconds = 0;
  uint64_t peak_cuda_bytes = 0, peak_host_bytes = 0, streamed_bytes = 0;
  std::string residency;
  std::optional<uint64_t> shards;  // merged metrics: how many
};

struct Metrics {
  MetricsHeader header;
  MemoryReport memory;
  std::optional<PplMetrics> ppl;
  std::optional<MmluMetrics> mmlu;
  std::optional<TaskMetrics> tasks;
  nlohmann::json speed;  // --speed: speed.hpp's record; null when not measured
  std::optional<EvalShard> shard;
  nlohmann::json shard_data;  // --shard: ppl_shard_data and mmlu_shard_data; null otherwise
  EvalFigures figures;
};
nlohmann::json to_json(const Metrics& m);
// Read back and checked: ConfigError or IoError (the document's kind) naming the file and the
// key path for a missing key of a group that is there, or a value of the wrong type.
Metrics metrics_from_json(const io::Doc& d);

}  // namespace kldq::eval
