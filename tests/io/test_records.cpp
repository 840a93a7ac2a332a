// The artifacts' typed records (calibration identity, planner record, profile.json, metrics.json):
// each written by to_json and read back through io::Doc gives the same JSON; a value of the wrong
// type at a nested key is an error naming the file and the key path; and what kldq writes on the
// embedded model reads back to the same bytes.
#include <cmath>
#include <limits>
#include <string>

#include "kldq/calib/calibration.hpp"
#include "kldq/eval/metrics.hpp"
#include "kldq/io/document.hpp"
#include "kldq/profile/record.hpp"
#include "kldq/quant/plan.hpp"
#include "kldq/quant/quantizer.hpp"
#include "support/catch.hpp"

namespace calib = kldq::calib;
namespace eval = kldq::eval;
namespace profile = kldq::profile;
namespace quant = kldq::quant;
using kldq::io::Doc;
using kldq::io::DocKind;
using nlohmann::json;

namespace {

// `edit` applied to `j`, then read by `read` from "f.json": the error's text.
template <class Read, class Edit>
std::string error_of(json j, Edit&& edit, Read&& read) {
  edit(j);
  try {
    (void)read(Doc(j, "f.json", DocKind::CONFIG));
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

const calib::CalibrationIdentity kCalib{"calib.txt", std::string(64, 'a'), 8, 128, 3, 9000};

quant::PlannerRecord planner() {
  quant::PlannerRecord r;
  r.strategy = "restore-top";
  r.profiles = std::vector<std::string>{"p.json"};
  r.model = "m", r.model_fingerprint = "f", r.calibration = kCalib;
  r.mode = "quantize-one", r.granularity = "linear", r.anchor_base = "nf4";
  r.anchor_baseline_kl = 0.25, r.predicted_kl = 0.125;
  r.params = 1000, r.weight_bytes = 600, r.bits_per_weight = 4.8;
  r.unit_formats = std::map<std::string, std::string>{{"model.layers.0.mlp.up_proj", "bf16"}};
  r.kldq_version = "0.1.0", r.percent = 10.0, r.by = "params", r.fused_groups = true;
  return r;
}

profile::ProfileRecord profile_record() {
  profile::ProfileRecord r;
  r.mode = profile::Mode::RESTORE_ONE, r.granularity = profile::Granularity::LINEAR;
  r.base = "nf4", r.method = quant::Method::GPTQ, r.batch = 8, r.cached = true;
  r.method_settings = {{"method", "gptq"},
                       {"gptq", {{"damp", 0.01}, {"block", 128}, {"act_order", true}}}};
  r.kldq_version = "0.1.0", r.model = "m", r.model_fingerprint = "f", r.calibration = kCalib;
  r.dtype = "fp32", r.device = "cpu", r.device_name = "cpu";
  r.baseline_kl = 0.5, r.baseline_kl_stderr = 0.01, r.baseline_top1_agree = 0.9;
  for (const char* id : {"model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"}) {
    profile::UnitRecord u{id, 100, 60, 200, 0.25, 0.002, 0.95};
    u.kl_gain = 0.25;
    u.proxies = profile::ProxyStats{1e-4, std::numeric_limits<double>::quiet_NaN(), 0.1, 2.0};
    r.units.push_back(u);
  }
  r.proxies = profile::ProxySummary{profile::ProxyCorrelations{0.5, std::nullopt, -0.25, 1.0},
                                    "kl_gain", 8};
  r.figures.seconds = 1.5, r.figures.seconds_profile = 1.25, r.figures.peak_cuda_bytes = 0;
  r.figures.peak_host_bytes = 1 << 20, r.figures.streamed_bytes = 0;
  r.figures.residency = "resident", r.figures.devices = std::vector<std::string>{"cuda:0"};
  return r;
}

eval::Metrics metrics() {
  eval::Metrics m;
  m.header = {"0.1.0", "m", "nf4", "m", "fp32", "cpu", "cpu", 8, json()};
  m.header.method_settings = quant::method_json({}, std::nullopt);
  m.memory = {5000, 4000, {{"nf4", 3000}, {"bf16", 1000}, {"other", 1000}}, 4.5, {}};
  m.memory.layers.push_back({"model.layers.0.mlp.up_proj", "nf4", 3000, 4.5});
  eval::PplMetrics& p = m.ppl.emplace();
  p.ppl = 12.5, p.nll_mean = 2.5, p.tokens = 100, p.windows = 2;
  p.ppl_ref = 12.0, p.nll_mean_ref = 2.48, p.plan_predicted_kl = 0.01;
  p.kl = eval::KlMetrics{0.01, 0.001, 0.005,  0.02, 0.03, 0.05, 0.1,
                         0.2,  0.9,   -0.001, 0.01, 0.02, 0.001};
  p.seconds_ppl = 2.0, p.tokens_per_second = 50.0;
  p.settings = {"sliding", 96, 40, -1, "t.txt", "ab"};
  eval::MmluMetrics& q = m.mmlu.emplace();
  q.acc = 0.5, q.n = 4, q.correct = 2, q.truncated = 0;
  q.by_subject["abstract_algebra"] = {0.5, 4};
  q.flips = eval::Flips{0.25, {0.05, 0.7}, 0.5, {0.15, 0.85}, 1, {0.05, 0.7}, 0, {0, 0.5}, 0.75};
  q.seconds_mmlu = 1.0;
  q.settings = {"5shot:1", 4, 2048, "mmlu", "cd", "m.predictions.jsonl", true};
  m.tasks = eval::TaskMetrics{{{"piqa", {{"acc", 0.5}, {"n", 4}}}}, 3.0, {{"dir", "tasks"}}};
  m.speed = {{"prompt", 128}};
  m.shard = eval::EvalShard{1, 2, 7};
  m.shard_data = {{"ppl", {{"windows", json::array()}}}};
  m.figures = {9.5, 0, 1 << 20, 0, "resident", std::nullopt};
  return m;
}

}  // namespace

TEST_CASE("calibration identity: round trip, key-path errors", "[io]") {
  const json j = calib::to_json(kCalib);
  const calib::CalibrationIdentity back = calib::calibration_from_json(Doc(j, "c", DocKind::DATA));
  CHECK(back == kCalib);
  CHECK(calib::to_json(back) == j);
  CHECK_THAT(error_of(
                 j, [](json& x) { x["seed"] = "three"; }, calib::calibration_from_json),
             HasText("f.json: seed: expected an integer >= 0, got \"three\""));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["samples"] = 0; }, calib::calibration_from_json),
             HasText("f.json: samples: expected an integer in [1, 16777216], got 0"));
  // Nested in recorded method settings.
  quant::MethodOptions gptq;
  gptq.method = quant::Method::GPTQ;
  const json settings = {{"method_settings", quant::method_json(gptq, kCalib)}};
  auto read_settings = [](const Doc& d) { return quant::method_from_json(d["method_settings"]); };
  CHECK(read_settings(Doc(settings, "p", DocKind::CONFIG)).calibration == kCalib);
  CHECK_THAT(error_of(
                 settings, [](json& x) { x["method_settings"]["calibration"]["seq_len"] = 1.5; },
                 read_settings),
             HasText("f.json: method_settings.calibration.seq_len: expected an integer"));
}

TEST_CASE("planner record: round trip through the plan, key-path errors", "[io]") {
  quant::Plan plan;
  plan.base = kldq::formats::FormatSpec::parse("nf4");
  plan.planner = planner();
  const json j = plan.to_json();
  const quant::Plan back = quant::Plan::from_json(j, "plan.json");
  REQUIRE(back.planner);
  CHECK(back.planner->calibration == kCalib);
  CHECK(back.planner->unit_formats->at("model.layers.0.mlp.up_proj") == "bf16");
  CHECK(back.to_json() == j);
  auto read = [](const Doc& d) { return quant::Plan::from_json(d.json(), d.file()); };
  CHECK_THAT(error_of(
                 j, [](json& x) { x["planner"]["calibration"]["sha256"] = 7; }, read),
             HasText("f.json: planner.calibration.sha256: expected a string, got 7"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["planner"]["predicted_kl"] = "low"; }, read),
             HasText("f.json: planner.predicted_kl: expected a finite number, got \"low\""));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["planner"]["profiles"][0] = false; }, read),
             HasText("f.json: planner.profiles[0]: expected a string, got false"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["planner"]["colour"] = "red"; }, read),
             HasText("f.json: planner.colour: unknown key"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["planner"].erase("strategy"); }, read),
             HasText("f.json: planner.strategy: missing"));
}

TEST_CASE("profile record: round trip, key-path errors", "[io][profile]") {
  const profile::ProfileRecord r = profile_record();
  const json j = profile::to_json(r);
  CHECK(j["units"][0]["weight_sqnr_db"].is_null());  // NaN: null in the file
  const profile::ProfileRecord back = profile::profile_from_json(Doc(j, "p", DocKind::CONFIG));
  CHECK(std::isnan(back.units[0].proxies->weight_sqnr_db));
  CHECK(back.calibration == kCalib);
  CHECK(profile::to_json(back) == j);
  CHECK_THAT(error_of(
                 j, [](json& x) { x["units"][1]["kl_gain"] = "big"; }, profile::profile_from_json),
             HasText("f.json: units[1].kl_gain: expected a finite number, got \"big\""));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["units"][0].erase("kl_gain"); }, profile::profile_from_json),
             HasText("f.json: units[0].kl_gain: missing"));  // a restore-one unit
  CHECK_THAT(error_of(
                 j, [](json& x) { x["units"][1].erase("fisher"); }, profile::profile_from_json),
             HasText("f.json: units[1].fisher: missing"));  // the proxies are recorded
  CHECK_THAT(
      error_of(
          j, [](json& x) { x["proxies"]["spearman"]["fisher"] = "x"; }, profile::profile_from_json),
      HasText("f.json: proxies.spearman.fisher: expected a number in [-1, 1]"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["calibration"]["file"] = 1; }, profile::profile_from_json),
             HasText("f.json: calibration.file: expected a string, got 1"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["devices"][0] = 0; }, profile::profile_from_json),
             HasText("f.json: devices[0]: expected a string, got 0"));
}

TEST_CASE("metrics: round trip, key-path errors", "[io][eval]") {
  const json j = eval::to_json(metrics());
  const eval::Metrics back = eval::metrics_from_json(Doc(j, "m", DocKind::DATA));
  CHECK(back.ppl->settings.stride == 40);
  CHECK(back.mmlu->flips->acc_ref == 0.75);
  CHECK(eval::to_json(back) == j);
  auto read = [](const Doc& d) { return eval::metrics_from_json(d); };
  CHECK_THAT(error_of(
                 j, [](json& x) { x["mmlu_by_subject"]["abstract_algebra"]["n"] = "4"; }, read),
             HasText("f.json: mmlu_by_subject.abstract_algebra.n: expected an integer"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["layers"][0]["bytes"] = -1; }, read),
             HasText("f.json: layers[0].bytes: expected an integer >= 0, got -1"));
  CHECK_THAT(error_of(
                 j,
                 [](json& x) {
                   x["flip_rate_ci"] = {0.1, 0.2, 0.3};
                 },
                 read),
             HasText("f.json: flip_rate_ci: expected [low, high], got 3 values"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["ppl_settings"]["ctx"] = "long"; }, read),
             HasText("f.json: ppl_settings.ctx: expected an integer"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x["method_settings"]["method"] = "magic"; }, read),
             HasText("f.json: method_settings.method: unknown method 'magic'"));
  CHECK_THAT(error_of(
                 j, [](json& x) { x.erase("kl_p99"); }, read),
             HasText("f.json: kl_p99: missing"));  // the KL group is there (kl_mean)
}

TEST_CASE("what kldq writes reads back to the same bytes", "[io][cli]") {
  const kldq::test::fs::path root = KLDQ_SOURCE_DIR;
  const std::string model = (root / "models/wikitext-qwen2-4m").string();
  const std::string text = (root / "data/demo/wiki.test.tail.txt").string();
  kldq::test::TempDir dir("records");
  auto path = [&](const char* name) { return (dir / name).string(); };
  auto ok = [](const std::string& args) {
    const auto r = kldq::test::run_kldq(args);
    INFO(args << "\n" << r.err);
    REQUIRE(r.rc == 0);
  };
  ok("profile " + model + " --base nf4 --method gptq --calib " + text +
     " --samples 4 --seq-len 32 --mode restore-one --proxies --device cpu -o " + path("p.json"));
  ok("plan " + path("p.json") + " --restore-top 25% --by params -o " + path("plan.json"));
  ok("eval " + model + " --plan " + path("plan.json") + " --ppl " +
     (root / "data/demo/wiki.test.head.txt").string() + " --ctx 64 --kld --mmlu " +
     (root / "data/demo/mmlu").string() + " --mmlu-limit 8 --shots 0 --device cpu -o " +
     path("m.json"));
  auto same = [&](const char* name, auto&& reread) {
    const std::string written = kldq::test::read_text(dir / name);
    const json j = json::parse(written);
    CHECK(reread(j).dump(2) + "\n" == written);
  };
  same("p.json", [](const json& j) {
    return profile::to_json(profile::profile_from_json(Doc(j, "p", DocKind::CONFIG)));
  });
  same("plan.json", [](const json& j) { return quant::Plan::from_json(j, "plan").to_json(); });
  same("m.json", [](const json& j) {
    return eval::to_json(eval::metrics_from_json(Doc(j, "m", DocKind::DATA)));
  });
}
