// The experiment runner in-process (experiment::run_experiment, no binary spawned): a sweep's
// stages run in order, the restore-top plan restores exactly the profile's most costly units
// (derived here from profile.json), each point's record carries its evaluation's metrics, and a
// second run reuses every stage without touching its artifact.
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kldq/experiment/config.hpp"
#include "kldq/experiment/runner.hpp"
#include "support/catch.hpp"

namespace {

namespace fs = std::filesystem;

nlohmann::json read_json(const fs::path& p) {
  return nlohmann::json::parse(kldq::test::read_text(p));
}

// Every stage artifact: path -> modification time (ns).
std::map<std::string, int64_t> mtimes(const fs::path& out) {
  std::map<std::string, int64_t> m;
  for (const auto& f : fs::recursive_directory_iterator(out / "stages")) {
    struct stat st {};
    if (f.is_regular_file() && ::stat(f.path().c_str(), &st) == 0)
      m[f.path().string()] = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  }
  return m;
}

}  // namespace

TEST_CASE("the experiment runner runs stages in-process, plans by the profile, reuses stages",
          "[experiment][run]") {
  kldq::test::TempDir dir("runner");
  const fs::path src = KLDQ_SOURCE_DIR;
  kldq::test::write_text(
      dir / "e.yaml",
      fmt::format(R"(name: inproc
models: ['{}']
data: {{calib: '{}', ppl: '{}'}}
calibration: {{samples: 4, seq_len: 64, seed: 0}}
profile: {{method: rtn, mode: quantize-one}}
eval: {{ctx: 128, kld: true}}
sweep: {{base: int4_g32, planner: [uniform, restore-top], restore_top: 25}}
output: '{}'
)",
                  (src / "models/wikitext-qwen2-4m").string(),
                  (src / "data/demo/wiki.test.tail.txt").string(),
                  (src / "data/demo/wiki.test.head.txt").string(), (dir / "out").string()));
  const kldq::experiment::Experiment e =
      kldq::experiment::load_experiment((dir / "e.yaml").string());
  REQUIRE(e.points.size() == 2);
  kldq::experiment::RunOptions o;
  o.compute.device = "cpu";
  const std::vector<size_t> points = kldq::experiment::shard_points(e, {});
  const std::string summary = kldq::experiment::run_experiment(e, o, points);
  CHECK(summary.find("2 runs in") != std::string::npos);

  // One record per point, carrying its evaluation's numbers.
  std::vector<nlohmann::json> runs;
  std::istringstream lines(kldq::test::read_text(dir / "out" / "runs.jsonl"));
  for (std::string l; std::getline(lines, l);)
    if (!l.empty()) runs.push_back(nlohmann::json::parse(l));
  REQUIRE(runs.size() == 2);
  std::map<std::string, nlohmann::json> by_planner;
  for (const auto& r : runs) {
    const nlohmann::json m = read_json(dir / "out" / r["eval_file"].get<std::string>());
    CHECK(r["kl_mean"] == m["kl_mean"]);
    CHECK(r["ppl"] == m["ppl"]);
    by_planner[r["planner"]] = r;
  }
  REQUIRE(by_planner.count("restore-top"));
  // Restoring layers lowers the KL of the uniform base.
  CHECK(by_planner["restore-top"]["kl_mean"].get<double>() <
        by_planner["uniform"]["kl_mean"].get<double>());

  // The restore-top plan: the llround(25% of units) units of largest KL, ties in model order.
  const auto& rt = by_planner["restore-top"];
  const nlohmann::json profile = read_json(dir / "out" / rt["profile_files"][0].get<std::string>());
  std::vector<std::pair<double, size_t>> cost;
  const auto& units = profile["units"];
  for (size_t i = 0; i < units.size(); ++i) cost.push_back({-units[i]["kl_mean"].get<double>(), i});
  std::stable_sort(cost.begin(), cost.end());
  const auto k = static_cast<size_t>(std::llround(0.25 * double(units.size())));
  std::set<std::string> want, got;
  for (size_t i = 0; i < k; ++i) want.insert(units[cost[i].second]["id"].get<std::string>());
  const nlohmann::json plan = read_json(dir / "out" / rt["plan_file"].get<std::string>());
  for (const auto& ov : plan["overrides"]) {
    CHECK(ov["format"] == "bf16");
    got.insert(ov["layers"].get<std::string>());
  }
  CHECK(got == want);

  // Run again: every stage is reused, no artifact is rewritten, no point recorded twice.
  const auto before = mtimes(dir / "out");
  (void)kldq::experiment::run_experiment(e, o, points);
  CHECK(mtimes(dir / "out") == before);
  std::istringstream again(kldq::test::read_text(dir / "out" / "runs.jsonl"));
  size_t n = 0;
  for (std::string l; std::getline(again, l);) n += !l.empty();
  CHECK(n == 2);
}
