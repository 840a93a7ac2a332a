// Experiment files (docs/EXPERIMENTS.md): the typed schema of the
// YAML or JSON file `kldq run` takes, validated whole before any work starts (every error names
// the file and the full key path), the sweep expanded into its points, and the stages a run
// needs, each named by a key that hashes its inputs.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kldq/core/shard.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/plan/planner.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/quant/method.hpp"

namespace kldq::experiment {

// One sweep point: how the model is quantized and evaluated. Keys a point's planner does not
// use are absent (nullopt), so equal points compare equal; JSON and labels name the values
// through their vocabularies (profile::kGranularities, profile::kModes, plan::kStrategies,
// plan::kBys).
struct Point {
  std::string base;                                 // the profile the plan comes from: base,
  quant::Method method = quant::Method::RTN;        // method,
  std::optional<profile::Granularity> granularity;  // and unit granularity and mode (absent
  std::optional<profile::Mode> mode;                // for uniform points: no profile)
  plan::Strategy planner = plan::Strategy::UNIFORM;
  std::optional<double> percent;     // restore-top, random
  std::optional<plan::By> by;        // restore-top, random
  std::optional<double> budget_bpw;  // budget
  std::optional<uint64_t> seed;      // random
  nlohmann::json to_json() const;
};

// The evaluation of every stage; JSON names the protocols through their vocabularies
// (eval::kPplProtocols, eval::kMmluProtocols).
struct EvalSpec {
  eval::PplProtocol ppl_protocol = eval::PplProtocol::GPTQ;
  int64_t ctx = 0;  // 0: the protocol's default
  bool kld = true;
  eval::MmluProtocol mmlu_protocol = eval::MmluProtocol::FEWSHOT;
  int64_t shots = 5;
  int64_t mmlu_limit = 0;  // 0: every question
  int64_t batch = 8;
  std::vector<std::string> tasks;  // zero-shot tasks (data.tasks holds their files)
  int64_t tasks_limit = 0;         // 0: every item
  bool speed = false;              // eval --speed at every evaluation (and the reference's)
};

struct Experiment {
  std::string path, name;
  std::vector<std::string> models;
  std::string calib, ppl, mmlu;  // data files; "" when not given
  std::string tasks_dir;         // data.tasks: the zero-shot tasks' directory
  int64_t samples = 128, seq_len = 512;
  uint64_t calib_seed = 0;
  std::vector<std::string> candidates;  // plan.candidates: extra formats for budget points
  bool fused_groups = false;            // plan.fused_groups: kldq plan --fused-groups
  std::vector<std::string> export_to;   // export.to: every point's plan exported (kldq export)
  bool proxies = false;                 // profile.proxies: kldq profile --proxies
  EvalSpec eval;
  std::string output;          // default results/<name>
  std::string max_gpu_memory;  // "" = the command line's (--max-gpu-memory) or the default
  std::vector<Point> points;   // the sweep, expanded, duplicates removed, in order
  // The whole configuration with every default filled in (config.resolved.yaml's content).
  nlohmann::json resolved() const;
  // resolved() as YAML, keys sorted (config.resolved.yaml).
  std::string resolved_yaml() const;
};

// The largest sweep an experiment file may expand to (the product of its dimensions' sizes);
// a study of more points is several files (each point is a plan and an evaluation: hours).
inline constexpr size_t kMaxSweepPoints = 10000;

// Reads and validates an experiment file (YAML, or JSON, which YAML reads too). ConfigError
// "FILE: key.path[i]: what was expected, got what" for unknown keys, wrong types and impossible
// values; nothing is checked on disk here (models and data are checked when a run starts).
Experiment load_experiment(const std::string& path);

// A stage of a run and the key of its artifact: SHA-256 (first 16 hex digits) over the stage
// name, its inputs' identity (`model_id`: the checkpoint fingerprint) and configuration, the
// computation (device type and dtype: a bf16 GPU run and an fp32 CPU run are different work),
// and the kldq version.
struct Stage {
  std::string kind;  // reference, profile, plan, eval, export
  std::string model, key;
  nlohmann::json inputs;
  std::optional<size_t> point;  // the sweep point, for plan and eval
};
// The stages of `e` for one model, in the order they run: the reference evaluation, each
// distinct profile, then a plan and an evaluation per sweep point (uniform points need no
// profile), followed by the point's exports (export.to). `points` selects sweep points (a shard).
// `compute`: {"device": "cpu"|"cuda", "dtype": "fp32"|...}.
std::vector<Stage> plan_stages(const Experiment& e, const std::string& model,
                               const std::string& model_id, const std::vector<size_t>& points,
                               const nlohmann::json& compute);
// The stage's artifact directory inside the output directory: stages/<kind>-<key>.
std::string stage_dir(const Stage& s);
// Its main artifact, written last: the stage is finished exactly when stage_dir/this exists.
std::string stage_artifact(const Stage& s);

// The indices p of e.points with p % n == i (all of them for the whole list).
std::vector<size_t> shard_points(const Experiment& e, const Shard& shard);

}  // namespace kldq::experiment
