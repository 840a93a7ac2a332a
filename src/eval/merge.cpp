// Evaluation shards: their per-token scores and predictions recorded, checked and merged back
// into one run's metrics.
#include "kldq/eval/merge.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "kldq/core/error.hpp"
#include "kldq/eval/flips.hpp"
#include "kldq/io/document.hpp"

namespace kldq::eval {
namespace {

// The keys that say what was evaluated; every shard must agree on them (mmlu_settings without
// its predictions file, which is each shard's own). Every other key is a measurement, recomputed
// from the shards' data, or a figure of the run.
const std::set<std::string> kIdentity = {"kldq_version",
                                         "model",
                                         "quantization",
                                         "reference",
                                         "dtype",
                                         "device_name",
                                         "batch",
                                         "method_settings",
                                         "ppl_settings",
                                         "mmlu_settings",
                                         "plan_predicted_kl",
                                         "weight_bytes",
                                         "weight_bytes_linear",
                                         "weight_bytes_by_format",
                                         "bits_per_weight",
                                         "layers"};

// A shard's per-token scores of one window.
struct WindowScores {
  const ShardFile* file = nullptr;
  int64_t window = 0, tokens = 0;
  size_t offset = 0;  // of its first token in the shard's arrays
};

template <class T>
std::vector<T> array_of(const ShardFile& f, const nlohmann::json& j, const char* key) {
  try {
    return j.at(key).get<std::vector<T>>();
  } catch (const nlohmann::json::exception&) {
    throw ConfigError(
        fmt::format("{}: shard_data.ppl.{}: expected an array of numbers", f.path, key));
  }
}

// The whole run's per-token scores, windows in order.
TokenScores merge_ppl(const std::vector<const ShardFile*>& shards, bool with_reference) {
  const size_t total = shard_field(*shards[0], "windows");
  std::vector<WindowScores> windows;
  std::map<const ShardFile*, nlohmann::json> data;
  for (const ShardFile* f : shards) {
    const nlohmann::json& d = f->json["shard_data"]["ppl"];
    size_t offset = 0;
    for (const auto& w : d.at("windows")) {
      const auto pair = w.get<std::vector<int64_t>>();
      if (pair.size() != 2 || pair[0] < 0 || size_t(pair[0]) >= total || pair[1] < 0)
        throw ConfigError(fmt::format("{}: shard_data.ppl.windows: bad entry {}", f->path,
                                      io::shown_text(w.dump())));
      windows.push_back({f, pair[0], pair[1], offset});
      offset += size_t(pair[1]);
    }
    if (array_of<double>(*f, d, "nll").size() != offset)
      throw ConfigError(fmt::format("{}: shard_data.ppl.nll: {} tokens, its windows have {}",
                                    f->path, d["nll"].size(), offset));
  }
  std::sort(windows.begin(), windows.end(),
            [](const auto& a, const auto& b) { return a.window < b.window; });
  for (size_t k = 0; k < total; ++k) {
    if (k >= windows.size() || windows[k].window > int64_t(k))
      throw ConfigError(fmt::format("eval --merge: window {} is in no shard", k));
    if (windows[k].window < int64_t(k))
      throw ConfigError(fmt::format("{}: window {} is also in another shard", windows[k].file->path,
                                    windows[k].window));
  }
  if (windows.size() > total)
    throw ConfigError(fmt::format("{}: window {} is also in another shard",
                                  windows[total].file->path, windows[total].window));
  TokenScores s;
  s.windows = int64_t(total);
  std::map<const ShardFile*, std::map<std::string, std::vector<double>>> arrays;
  for (const ShardFile* f : shards) {
    const nlohmann::json& d = f->json["shard_data"]["ppl"];
    for (const char* key : {"nll", "nll_ref", "kl", "same_top1"})
      if (key == std::string("nll") || with_reference)
        arrays[f][key] = array_of<double>(*f, d, key);
  }
  for (const WindowScores& w : windows) {
    auto& a = arrays[w.file];
    auto append = [&](std::vector<double>& to, const char* key) {
      const std::vector<double>& from = a[key];
      if (from.size() < w.offset + size_t(w.tokens))
        throw ConfigError(
            fmt::format("{}: shard_data.ppl.{}: fewer values than tokens", w.file->path, key));
      to.insert(to.end(), from.begin() + std::ptrdiff_t(w.offset),
                from.begin() + std::ptrdiff_t(w.offset + size_t(w.tokens)));
    };
    append(s.nll, "nll");
    if (!with_reference) continue;
    append(s.nll_ref, "nll_ref");
    append(s.kl, "kl");
    std::vector<double> top1;
    append(top1, "same_top1");
    for (double t : top1) s.same_top1.push_back(uint8_t(t != 0));
  }
  return s;
}

// Runs of consecutive predictions of one subject.
std::vector<std::vector<MmluPrediction>> by_subject(const std::vector<MmluPrediction>& preds) {
  std::vector<std::vector<MmluPrediction>> runs;
  for (const MmluPrediction& p : preds) {
    if (runs.empty() || runs.back().back().subject != p.subject) runs.emplace_back();
    runs.back().push_back(p);
  }
  return runs;
}

// The whole run's predictions (key "predictions" or "reference"), subjects in order: subject k
// is the (k / n)-th of shard k % n.
std::vector<MmluPrediction> merge_mmlu(const std::vector<const ShardFile*>& shards, const char* key,
                                       std::string& protocol) {
  const size_t n = shards.size();
  const size_t subjects = shards[0]->json["shard_data"]["mmlu"].value("subjects", size_t(0));
  std::vector<std::vector<std::vector<MmluPrediction>>> runs;
  for (size_t i = 0; i < n; ++i) {
    const ShardFile& f = *shards[i];
    const nlohmann::json& d = f.json["shard_data"]["mmlu"];
    if (!d.contains(key) || !d[key].is_string())
      throw ConfigError(fmt::format("{}: shard_data.mmlu.{}: missing", f.path, key));
    runs.push_back(by_subject(parse_predictions(d[key].get<std::string>(),
                                                f.path + ": shard_data.mmlu." + key, &protocol)));
    const size_t want = Shard{i, n}.size_of(subjects);
    if (runs.back().size() != want)
      throw ConfigError(fmt::format("{}: {} MMLU subjects; shard {} of {} subjects has {}", f.path,
                                    runs.back().size(), Shard{i, n}.name(), subjects, want));
  }
  std::vector<MmluPrediction> out;
  for (size_t k = 0; k < subjects; ++k) {
    const auto& run = runs[k % n][k / n];
    out.insert(out.end(), run.begin(), run.end());
  }
  return out;
}

// The shards' files with each shard's own predictions path left out, for the agreement check.
std::vector<ShardFile> comparable(const std::vector<ShardFile>& files,
                                  std::set<std::string>& per_run) {
  std::vector<ShardFile> out = files;
  for (ShardFile& f : out) {
    if (f.json.is_object() && f.json.contains("mmlu_settings") &&
        f.json["mmlu_settings"].is_object())
      f.json["mmlu_settings"].erase("predictions");
    if (f.json.is_object())
      for (const auto& [k, v] : f.json.items())
        if (!kIdentity.count(k)) per_run.insert(k);
  }
  return out;
}

}  // namespace

nlohmann::json ppl_shard_data(const TokenScores& s, bool with_reference) {
  nlohmann::json windows = nlohmann::json::array();
  for (const TokenScores::Scored& w : s.scored) windows.push_back({w.window, w.tokens});
  nlohmann::json j = {{"windows", windows}, {"nll", s.nll}};
  if (with_reference) {  // also when the shard scored no window
    j["nll_ref"] = s.nll_ref, j["kl"] = s.kl;
    j["same_top1"] = std::vector<int>(s.same_top1.begin(), s.same_top1.end());
  }
  return j;
}

nlohmann::json mmlu_shard_data(const std::vector<MmluPrediction>& predictions,
                               const std::vector<MmluPrediction>* reference,
                               const std::string& reference_what, const std::string& protocol,
                               size_t subjects) {
  nlohmann::json j = {{"predictions", predictions_jsonl(predictions, protocol)},
                      {"subjects", subjects}};
  if (reference) {
    j["reference"] = predictions_jsonl(*reference, protocol);
    j["reference_what"] = reference_what;
  }
  return j;
}

namespace {

// Every shard holds the same measurements as objects (the first's decide what is merged).
void check_shard_data(const std::vector<const ShardFile*>& shards) {
  for (const ShardFile* f : shards) {
    if (!f->json.contains("shard_data") || !f->json["shard_data"].is_object())
      throw ConfigError(fmt::format("{}: shard_data: missing", f->path));
    const nlohmann::json& d = f->json["shard_data"];
    const nlohmann::json& d0 = shards[0]->json["shard_data"];
    for (const char* key : {"ppl", "mmlu"}) {
      if (d.contains(key) != (d0.is_object() && d0.contains(key)))
        throw ConfigError(fmt::format("{} and {} disagree on shard_data.{} (one has it)",
                                      shards[0]->path, f->path, key));
      if (d.contains(key) && !d[key].is_object())
        throw ConfigError(fmt::format("{}: shard_data.{}: expected an object", f->path, key));
    }
    if (d.contains("ppl") && !(d["ppl"].contains("windows") && d["ppl"]["windows"].is_array()))
      throw ConfigError(fmt::format("{}: shard_data.ppl.windows: expected an array", f->path));
    if (f->json.contains("kl_mean") != shards[0]->json.contains("kl_mean"))
      throw ConfigError(fmt::format("{} and {} disagree on --kld", shards[0]->path, f->path));
    if (d.contains("mmlu") && d["mmlu"].contains("reference") != d0["mmlu"].contains("reference"))
      throw ConfigError(
          fmt::format("{} and {} disagree on MMLU flips (one has the reference's "
                      "predictions)",
                      shards[0]->path, f->path));
  }
}

// The merged perplexity group: recomputed from the shards' per-token scores, with the first
// shard's settings and prediction (every shard has the same).
PplMetrics merged_ppl(const std::vector<const ShardFile*>& shards, const PplMetrics& first) {
  const TokenScores s = merge_ppl(shards, first.kl.has_value());
  PplMetrics p = ppl_metrics(s, first.kl.has_value());
  p.plan_predicted_kl = first.plan_predicted_kl;
  p.settings = first.settings;
  p.seconds_ppl = summed_figure(shards, "seconds_ppl");
  p.tokens_per_second = double(s.nll.size()) / p.seconds_ppl;
  return p;
}

// The merged MMLU group (and its predictions JSONL into `predictions`).
MmluMetrics merged_mmlu(const std::vector<const ShardFile*>& shards, const MmluMetrics& first,
                        std::string& predictions) {
  const nlohmann::json& data = shards[0]->json["shard_data"]["mmlu"];
  std::string protocol;
  const std::vector<MmluPrediction> preds = merge_mmlu(shards, "predictions", protocol);
  MmluMetrics m = mmlu_metrics(preds);
  if (data.contains("reference")) {
    std::string ref_protocol;
    m.flips = flip_summary(merge_mmlu(shards, "reference", ref_protocol), preds,
                           data.value("reference_what", "reference"));
  }
  m.settings = first.settings;
  m.seconds_mmlu = summed_figure(shards, "seconds_mmlu");
  predictions = predictions_jsonl(preds, protocol);
  return m;
}

}  // namespace

MergedEval merge_shards(const std::vector<ShardFile>& files) {
  std::set<std::string> per_run;
  const std::vector<ShardFile> same = comparable(files, per_run);
  const std::vector<const ShardFile*> order =
      check_shards(same, "eval --merge", "kldq eval --shard i/n", per_run);
  std::vector<const ShardFile*> shards;  // the originals, in shard order
  for (const ShardFile* f : order) shards.push_back(&files[size_t(f - same.data())]);
  check_shard_data(shards);
  // Every shard read as metrics (the first's say what is merged; the others agree on it).
  std::vector<Metrics> read;
  for (const ShardFile* f : shards)
    read.push_back(metrics_from_json(io::Doc(f->json, f->path, io::DocKind::CONFIG)));
  const Metrics& first = read[0];
  MergedEval out;
  Metrics& m = out.metrics;
  m.header = first.header, m.memory = first.memory;
  try {
    if (first.ppl && first.shard_data.contains("ppl")) m.ppl = merged_ppl(shards, *first.ppl);
    if (first.mmlu && first.shard_data.contains("mmlu"))
      m.mmlu = merged_mmlu(shards, *first.mmlu, out.predictions_jsonl);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("eval --merge: a shard's data is malformed ({})", e.what()));
  }
  const MergedFigures f = merged_figures(shards);
  // The first shard's device and residency.
  m.header.device = first.header.device, m.figures.residency = first.figures.residency;
  m.figures.seconds = f.seconds, m.figures.streamed_bytes = f.streamed_bytes;
  m.figures.peak_cuda_bytes = f.peak_cuda_bytes, m.figures.peak_host_bytes = f.peak_host_bytes;
  m.figures.shards = f.shards;
  return out;
}

}  // namespace kldq::eval
