// metrics.json: a Metrics written as its flat keys, and read back group by group through the
// document reader.
#include "kldq/eval/metrics.hpp"

#include <cmath>
#include <limits>

#include "kldq/quant/quantizer.hpp"

namespace kldq::eval {
namespace {

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

const auto kStr = [](const io::Doc& v) { return v.str(); };
const auto kFinite = [](const io::Doc& v) { return v.finite(); };

// A time or rate the run measured about itself: >= 0.
double figure(const io::Doc& d) {
  return d.number(0, std::numeric_limits<double>::max());
}

void put_header(nlohmann::json& j, const MetricsHeader& h) {
  j["kldq_version"] = h.kldq_version, j["model"] = h.model, j["quantization"] = h.quantization;
  j["reference"] = h.reference, j["dtype"] = h.dtype, j["device"] = h.device;
  j["device_name"] = h.device_name, j["batch"] = h.batch;
  if (!h.method_settings.is_null()) j["method_settings"] = h.method_settings;
}

MetricsHeader header_from_json(const io::Doc& d) {
  MetricsHeader h{d["kldq_version"].str(),
                  d["model"].str(),
                  d["quantization"].str(),
                  d["reference"].str(),
                  d["dtype"].str(),
                  d["device"].str(),
                  d["device_name"].str(),
                  d["batch"].integer(1, kMaxInt),
                  nullptr};
  if (d.has("method_settings")) {
    (void)quant::method_from_json(d["method_settings"]);  // checked
    h.method_settings = d["method_settings"].json();
  }
  return h;
}

void put_memory(nlohmann::json& j, const MemoryReport& m) {
  j["weight_bytes"] = m.weight_bytes, j["weight_bytes_linear"] = m.weight_bytes_linear;
  j["weight_bytes_by_format"] = m.weight_bytes_by_format;
  j["bits_per_weight"] = m.bits_per_weight;
  j["layers"] = nlohmann::json::array();
  for (const LayerBytes& l : m.layers)
    j["layers"].push_back({{"id", l.id},
                           {"format", l.format},
                           {"bytes", l.bytes},
                           {"bits_per_weight", l.bits_per_weight}});
}

MemoryReport memory_from_json(const io::Doc& d) {
  MemoryReport m;
  m.weight_bytes = d["weight_bytes"].unsigned_integer();
  m.weight_bytes_linear = d["weight_bytes_linear"].unsigned_integer();
  const io::Doc formats = d["weight_bytes_by_format"];
  formats.require_object();
  for (const auto& [name, bytes] : formats.json().items())
    m.weight_bytes_by_format[name] = formats[name].unsigned_integer();
  m.bits_per_weight = d["bits_per_weight"].finite();
  const io::Doc layers = d["layers"];
  for (size_t i = 0; i < layers.size(); ++i) {
    const io::Doc l = layers[i];
    m.layers.push_back({l["id"].str(), l["format"].str(), l["bytes"].unsigned_integer(),
                        l["bits_per_weight"].finite()});
  }
  return m;
}

nlohmann::json to_json(const KlMetrics& k) {
  return {{"kl_mean", k.kl_mean},
          {"kl_stderr", k.kl_stderr},
          {"kl_median", k.kl_median},
          {"kl_p90", k.kl_p90},
          {"kl_p95", k.kl_p95},
          {"kl_p99", k.kl_p99},
          {"kl_p99_9", k.kl_p99_9},
          {"kl_max", k.kl_max},
          {"top1_agree", k.top1_agree},
          {"dp_mean", k.dp_mean},
          {"dp_rms", k.dp_rms},
          {"ln_ppl_ratio", k.ln_ppl_ratio},
          {"ln_ppl_ratio_stderr", k.ln_ppl_ratio_stderr}};
}

KlMetrics kl_from_json(const io::Doc& d) {
  return {d["kl_mean"].finite(),
          d["kl_stderr"].finite(),
          d["kl_median"].finite(),
          d["kl_p90"].finite(),
          d["kl_p95"].finite(),
          d["kl_p99"].finite(),
          d["kl_p99_9"].finite(),
          d["kl_max"].finite(),
          d["top1_agree"].number(0, 1),
          d["dp_mean"].finite(),
          d["dp_rms"].finite(),
          d["ln_ppl_ratio"].finite(),
          d["ln_ppl_ratio_stderr"].finite()};
}

void put_ppl(nlohmann::json& j, const PplMetrics& p) {
  j["ppl"] = p.ppl, j["nll_mean"] = p.nll_mean, j["tokens"] = p.tokens, j["windows"] = p.windows;
  io::put_optional(j, "ppl_ref", p.ppl_ref);
  io::put_optional(j, "nll_mean_ref", p.nll_mean_ref);
  if (p.kl) j.update(to_json(*p.kl));
  io::put_optional(j, "plan_predicted_kl", p.plan_predicted_kl);
  j["seconds_ppl"] = p.seconds_ppl;
  io::put_optional(j, "tokens_per_second", p.tokens_per_second);
  const PplSettings& s = p.settings;
  j["ppl_settings"] = {{"protocol", s.protocol},
                       {"ctx", s.ctx},
                       {"bos", s.bos},
                       {"file", s.file},
                       {"sha256", s.sha256}};
  io::put_optional(j["ppl_settings"], "stride", s.stride);
}

PplMetrics ppl_from_json(const io::Doc& d) {
  PplMetrics p;
  p.ppl = d["ppl"].finite(), p.nll_mean = d["nll_mean"].finite();
  p.tokens = d["tokens"].integer(0, kMaxInt), p.windows = d["windows"].integer(0, kMaxInt);
  d.optional("ppl_ref", p.ppl_ref, kFinite);
  d.optional("nll_mean_ref", p.nll_mean_ref, kFinite);
  if (d.has("kl_mean")) p.kl = kl_from_json(d);
  d.optional("plan_predicted_kl", p.plan_predicted_kl, kFinite);
  p.seconds_ppl = figure(d["seconds_ppl"]);
  d.optional("tokens_per_second", p.tokens_per_second, figure);
  const io::Doc s = d["ppl_settings"];
  s.keys({"protocol", "ctx", "stride", "bos", "file", "sha256"});
  p.settings = {s["protocol"].str(), s["ctx"].integer(1, kMaxInt),
                std::nullopt,        s["bos"].integer(-1, kMaxInt),
                s["file"].str(),     s["sha256"].str()};
  s.optional("stride", p.settings.stride, [](const io::Doc& v) { return v.integer(1, kMaxInt); });
  return p;
}

void put_mmlu(nlohmann::json& j, const MmluMetrics& m) {
  j["mmlu_acc"] = m.acc, j["mmlu_n"] = m.n, j["mmlu_correct"] = m.correct;
  j["mmlu_truncated"] = m.truncated;
  j["mmlu_by_subject"] = nlohmann::json::object();
  for (const auto& [subject, a] : m.by_subject)
    j["mmlu_by_subject"][subject] = {{"acc", a.acc}, {"n", a.n}};
  if (m.flips) j.update(to_json(*m.flips, "mmlu_acc_ref"));
  j["seconds_mmlu"] = m.seconds_mmlu;
  const MmluSettings& s = m.settings;
  j["mmlu_settings"] = {{"protocol", s.protocol},
                        {"limit", s.limit},
                        {"max_len", s.max_len},
                        {"path", s.path},
                        {"sha256", s.sha256},
                        {"predictions", s.predictions},
                        {"shared_prefix", s.shared_prefix}};
}

MmluMetrics mmlu_from_json(const io::Doc& d) {
  MmluMetrics m;
  m.acc = d["mmlu_acc"].number(0, 1), m.n = d["mmlu_n"].integer(0, kMaxInt);
  m.correct = d["mmlu_correct"].integer(0, kMaxInt);
  m.truncated = d["mmlu_truncated"].integer(0, kMaxInt);
  const io::Doc by = d["mmlu_by_subject"];
  by.require_object();
  for (const auto& [subject, a] : by.json().items())
    m.by_subject[subject] = {by[subject]["acc"].number(0, 1), by[subject]["n"].integer(0, kMaxInt)};
  if (d.has("flip_rate")) m.flips = flips_from_json(d, "mmlu_acc_ref");
  m.seconds_mmlu = figure(d["seconds_mmlu"]);
  const io::Doc s = d["mmlu_settings"];
  s.keys({"protocol", "limit", "max_len", "path", "sha256", "predictions", "shared_prefix"});
  m.settings = {s["protocol"].str(),
                s["limit"].integer(0, kMaxInt),
                s["max_len"].integer(0, kMaxInt),
                s["path"].str(),
                s["sha256"].str(),
                s["predictions"].str(),
                s["shared_prefix"].boolean()};
  return m;
}

TaskMetrics tasks_from_json(const io::Doc& d) {
  TaskMetrics t;
  const io::Doc tasks = d["tasks"];
  tasks.require_object();
  for (const auto& [name, record] : tasks.json().items()) {
    tasks[name].require_object();
    t.tasks[name] = record;
  }
  t.seconds_tasks = figure(d["seconds_tasks"]);
  d["tasks_settings"].require_object();
  t.settings = d["tasks_settings"].json();
  return t;
}

void put_figures(nlohmann::json& j, const EvalFigures& f) {
  j["seconds"] = f.seconds, j["peak_cuda_bytes"] = f.peak_cuda_bytes;
  j["peak_host_bytes"] = f.peak_host_bytes, j["streamed_bytes"] = f.streamed_bytes;
  j["residency"] = f.residency;
  io::put_optional(j, "shards", f.shards);
}

EvalFigures figures_from_json(const io::Doc& d) {
  EvalFigures f{figure(d["seconds"]),
                d["peak_cuda_bytes"].unsigned_integer(),
                d["peak_host_bytes"].unsigned_integer(),
                d["streamed_bytes"].unsigned_integer(),
                d["residency"].str(),
                std::nullopt};
  d.optional("shards", f.shards, [](const io::Doc& v) { return v.unsigned_integer(); });
  return f;
}

}  // namespace

PplMetrics ppl_metrics(const TokenScores& s, bool with_reference) {
  const nlohmann::json j = ppl_summary(s.nll, s.windows);
  PplMetrics p;
  p.ppl = j["ppl"].get<double>(), p.nll_mean = j["nll_mean"].get<double>();
  p.tokens = j["tokens"].get<int64_t>(), p.windows = j["windows"].get<int64_t>();
  if (!with_reference) return p;
  const nlohmann::json r = ppl_summary(s.nll_ref, s.windows, "_ref");
  p.ppl_ref = r["ppl_ref"].get<double>(), p.nll_mean_ref = r["nll_mean_ref"].get<double>();
  const nlohmann::json k = kl_summary(s);
  p.kl = kl_from_json(io::Doc(k, "kl_summary", io::DocKind::DATA));
  return p;
}

MmluMetrics mmlu_metrics(const std::vector<MmluPrediction>& preds) {
  MmluMetrics m;
  for (const auto& p : preds) {
    const bool ok = p.pred == p.answer;
    m.correct += ok, m.truncated += p.truncated;
    SubjectAccuracy& s = m.by_subject[p.subject];
    s.acc += ok, s.n += 1;  // the correct answers, divided below
  }
  for (auto& [subject, s] : m.by_subject) s.acc /= double(s.n);
  m.n = int64_t(preds.size());
  m.acc = preds.empty() ? 0.0 : double(m.correct) / double(preds.size());
  return m;
}

nlohmann::json to_json(const Metrics& m) {
  nlohmann::json j = nlohmann::json::object();
  put_header(j, m.header);
  put_memory(j, m.memory);
  if (m.ppl) put_ppl(j, *m.ppl);
  if (m.mmlu) put_mmlu(j, *m.mmlu);
  if (m.tasks) {
    j["tasks"] = m.tasks->tasks;
    j["seconds_tasks"] = m.tasks->seconds_tasks, j["tasks_settings"] = m.tasks->settings;
  }
  if (!m.speed.is_null()) j["speed"] = m.speed;
  if (m.shard)
    j["shard"] = {
        {"index", m.shard->index}, {"count", m.shard->count}, {"windows", m.shard->windows}};
  if (!m.shard_data.is_null()) j["shard_data"] = m.shard_data;
  put_figures(j, m.figures);
  return j;
}

Metrics metrics_from_json(const io::Doc& d) {
  d.require_object();
  Metrics m;
  m.header = header_from_json(d);
  m.memory = memory_from_json(d);
  if (d.has("ppl")) m.ppl = ppl_from_json(d);
  if (d.has("mmlu_acc")) m.mmlu = mmlu_from_json(d);
  if (d.has("tasks")) m.tasks = tasks_from_json(d);
  if (d.has("speed")) {
    d["speed"].require_object();
    m.speed = d["speed"].json();
  }
  if (d.has("shard")) {
    const io::Doc s = d["shard"];
    s.keys({"index", "count", "windows"});
    m.shard = EvalShard{s["index"].unsigned_integer(), s["count"].unsigned_integer(),
                        s["windows"].unsigned_integer()};
  }
  if (d.has("shard_data")) m.shard_data = d["shard_data"].json();
  m.figures = figures_from_json(d);
  return m;
}

}  // namespace kldq::eval
