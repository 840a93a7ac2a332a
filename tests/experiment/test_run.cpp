// `kldq run` and `kldq report` end to end on the embedded demo model (configs/demo.yaml, whose
// model and data are in the repository): killed mid-sweep with SIGKILL and with SIGINT and run
// again, every sweep point is recorded exactly once, nothing finished is recomputed, no partial
// file is left, and the numbers have the shape the study expects. Plus the run's errors and
// shards merged by the report.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kldq/core/hash.hpp"
#include "support/catch.hpp"

extern char** environ;

using kldq::test::run_command;
using kldq::test::run_kldq;
namespace fs = std::filesystem;

namespace {

const fs::path kSource = KLDQ_SOURCE_DIR;

std::vector<nlohmann::json> read_jsonl(const fs::path& p) {
  std::vector<nlohmann::json> out;
  std::istringstream in(kldq::test::read_text(p));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));  // throws on a torn line
  return out;
}

// Every finished stage's main artifact: path -> (mtime in ns, content hash).
std::map<std::string, std::pair<int64_t, std::string>> artifacts(const fs::path& out) {
  std::map<std::string, std::pair<int64_t, std::string>> m;
  if (!fs::exists(out / "stages")) return m;
  for (const auto& d : fs::directory_iterator(out / "stages"))
    for (const char* name : {"metrics.json", "profile.json", "plan.json"}) {
      const fs::path f = d.path() / name;
      struct stat st {};
      if (::stat(f.c_str(), &st) != 0) continue;
      m[f.string()] = {int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                       kldq::sha256_path(f.string())};
    }
  return m;
}

std::vector<std::string> temp_files(const fs::path& out) {
  std::vector<std::string> t;
  for (const auto& f : fs::recursive_directory_iterator(out))
    if (f.path().filename().string().find(".kldq-tmp-") != std::string::npos)
      t.push_back(f.path().string());
  return t;
}

// Starts `kldq run configs/demo.yaml` from the source root, its output to `log`, with SIGINT at
// its default action (as under a terminal's Ctrl-C; a shell would start it ignored), waits until
// runs.jsonl has at least `lines` records, then sends `sig`. Returns the wait status.
int run_and_kill(const fs::path& out, size_t lines, int sig, const fs::path& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addchdir_np(&fa, kSource.c_str());
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  std::vector<std::string> args = {KLDQ_BINARY, "run", "configs/demo.yaml", "--output",
                                   out.string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, KLDQ_BINARY, &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  REQUIRE(rc == 0);
  int status = 0;
  // A deadline far beyond the demo's run time, so that a stalled run fails the test.
  for (int polls = 0; polls < 30000; ++polls) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;  // ended before the kill
    std::error_code ec;
    if (fs::exists(out / "runs.jsonl", ec)) {
      std::istringstream in(kldq::test::read_text(out / "runs.jsonl"));
      size_t n = 0;
      for (std::string line; std::getline(in, line);) n += !line.empty();
      if (n >= lines) break;
    }
    ::usleep(20000);
  }
  ::kill(pid, sig);
  ::waitpid(pid, &status, 0);
  return status;
}

// Killed by `sig`, not finished: the test is about resuming.
void check_killed(int status, int sig, const fs::path& log) {
  INFO(kldq::test::read_text(log));
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == sig);
}

}  // namespace

TEST_CASE("kldq run configs/demo.yaml: killed twice, resumed, reported", "[experiment][run]") {
  kldq::test::TempDir dir("run-demo");
  const fs::path out = dir / "demo";
  check_killed(run_and_kill(out, 3, SIGKILL, dir / "kill.log"), SIGKILL, dir / "kill.log");
  const auto after_kill = read_jsonl(out / "runs.jsonl");
  const auto finished = artifacts(out);
  REQUIRE(after_kill.size() >= 3);
  check_killed(run_and_kill(out, after_kill.size() + 2, SIGINT, dir / "int.log"), SIGINT,
               dir / "int.log");
  const auto after_int = read_jsonl(out / "runs.jsonl");
  REQUIRE(after_int.size() >= after_kill.size() + 2);

  const auto r = run_command("cd '" + kSource.string() + "' && '" + KLDQ_BINARY +
                             "' run configs/demo.yaml --output '" + out.string() + "'");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const auto runs = read_jsonl(out / "runs.jsonl");
  const nlohmann::json manifest =
      nlohmann::json::parse(kldq::test::read_text(out / "manifest.json"));
  const size_t n = manifest["points"].get<size_t>();
  // Every point exactly once; the records of the killed runs kept as they were, in front.
  std::multiset<int64_t> points;
  for (const auto& rec : runs) points.insert(rec["point"].get<int64_t>());
  CHECK(runs.size() == n);
  for (size_t p = 0; p < n; ++p) CHECK(points.count(int64_t(p)) == 1);
  for (size_t i = 0; i < after_int.size(); ++i) CHECK(runs[i] == after_int[i]);
  // Nothing finished before the kill was computed again (same file, same mtime).
  const auto now = artifacts(out);
  for (const auto& [path, stamp] : finished) {
    INFO(path);
    REQUIRE(now.count(path));
    CHECK(now.at(path) == stamp);
  }
  CHECK_THAT(r.err, HasText("finished before"));
  for (const auto& t : temp_files(out)) FAIL_CHECK("temporary left behind: " << t);
  // summary.csv: a header and one row per point; the final table on stdout.
  std::istringstream csv(kldq::test::read_text(out / "summary.csv"));
  size_t rows = 0;
  for (std::string line; std::getline(csv, line);) rows += !line.empty();
  CHECK(rows == n + 1);
  CHECK_THAT(r.out, HasText("| nf4 rtn linear restore-top 30% by params |"));

  // Killed between an evaluation's metrics and its record: the next run records it from the
  // artifact, without computing it again.
  {
    std::string text;
    for (size_t i = 0; i + 1 < runs.size(); ++i) text += runs[i].dump() + "\n";
    kldq::test::write_text(out / "runs.jsonl", text);
    const auto again = run_command("cd '" + kSource.string() + "' && '" + KLDQ_BINARY +
                                   "' run configs/demo.yaml --output '" + out.string() + "'");
    INFO(again.err);
    REQUIRE(again.rc == 0);
    CHECK_THAT(again.err, HasText("reused") && !HasText(" s\n"));
    CHECK(read_jsonl(out / "runs.jsonl") == runs);
  }

  // The study's shape on a real trained model: KL and flips fall as more is restored, and NF4
  // degrades more than scaled FP8.
  std::map<std::string, std::map<double, nlohmann::json>> series;  // base+granularity -> % -> rec
  for (const auto& rec : runs)
    series[rec["base"].get<std::string>() + " " + rec["granularity"].get<std::string>()]
          [rec["percent"].get<double>()] = rec;
  REQUIRE(series.size() == 4);
  for (const auto& [name, s] : series) {
    INFO(name);
    const auto& first = s.begin()->second;
    const auto& last = s.rbegin()->second;
    CHECK(s.begin()->first == 0);
    CHECK(last["kl_mean"].get<double>() < 0.8 * first["kl_mean"].get<double>());
    CHECK(last["flip_rate"].get<double>() <= first["flip_rate"].get<double>());
    // Each step restores at least what the previous one did: KL never rises by more than noise.
    double prev = first["kl_mean"].get<double>(), prev_se = first["kl_stderr"].get<double>();
    for (const auto& [pct, rec] : s) {
      CHECK(rec["kl_mean"].get<double>() <= prev + 3 * (prev_se + rec["kl_stderr"].get<double>()));
      prev = rec["kl_mean"].get<double>(), prev_se = rec["kl_stderr"].get<double>();
    }
  }
  CHECK(series["nf4 linear"][0]["kl_mean"].get<double>() >
        2 * series["fp8_e4m3 linear"][0]["kl_mean"].get<double>());
  // (Not perplexity: on a model this small, NF4's noise moves it by less than its spread.)
  CHECK(series["nf4 linear"][0]["top1_agree"].get<double>() <
        series["fp8_e4m3 linear"][0]["top1_agree"].get<double>());
  CHECK(series["nf4 linear"][0]["flip_rate"].get<double>() >=
        series["fp8_e4m3 linear"][0]["flip_rate"].get<double>());

  // The report: tables always; plots when the test Python has matplotlib.
  const auto rep = run_kldq("report '" + out.string() + "' --format csv");
  INFO(rep.err);
  REQUIRE(rep.rc == 0);
  CHECK(rep.out == kldq::test::read_text(out / "summary.csv"));
  for (const char* f : {"summary.md", "summary.csv", "summary.json"})
    CHECK(fs::is_regular_file(out / "report" / f));
  // The summary says how the plans' predicted KLs tracked the measured ones.
  CHECK_THAT(kldq::test::read_text(out / "report" / "summary.md"),
             HasText("Planner predictions against measured KL: mean relative error"));
  if (kldq::test::python_with("matplotlib")) {
    size_t png = 0, svg = 0;
    for (const auto& f : fs::directory_iterator(out / "report")) {
      png += f.path().extension() == ".png";
      svg += f.path().extension() == ".svg";
    }
    CHECK(png >= 3);
    CHECK(svg == png);
  } else if (kldq::test::require_data()) {
    FAIL(
        "the test Python has no matplotlib (KLDQ_REQUIRE_DATA is set: scripts/setup.sh installs "
        "it)");
  } else {
    WARN("the test Python has no matplotlib: plots not checked");
  }
}

TEST_CASE("kldq run: shards merged by kldq report; bad inputs stop before any work",
          "[experiment][run]") {
  kldq::test::TempDir dir("run-shards");
  const fs::path model = kSource / "models" / "wikitext-qwen2-4m";
  const std::string config = fmt::format(
      R"(name: shards
models: ['{}']
data: {{ppl: '{}'}}
sweep: {{planner: uniform, base: [nf4, int8, fp8_e4m3]}}
eval: {{ctx: 256, kld: true}}
output: '{}'
)",
      model.string(), (kSource / "data/demo/wiki.test.head.txt").string(), (dir / "out").string());
  kldq::test::write_text(dir / "e.yaml", config);
  const std::string e = (dir / "e.yaml").string();
  const auto s0 = run_kldq("run " + e + " --shard 0/2");
  INFO(s0.err);
  REQUIRE(s0.rc == 0);
  const auto s1 = run_kldq("run " + e + " --shard 1/2");
  INFO(s1.err);
  REQUIRE(s1.rc == 0);
  CHECK_THAT(s1.err, HasText("reference bf16 model: reused"));  // computed once, by shard 0
  auto points_of = [](const std::vector<nlohmann::json>& runs) {
    std::vector<int64_t> p;
    for (const auto& r : runs) p.push_back(r["point"].get<int64_t>());
    return p;
  };
  CHECK(points_of(read_jsonl(dir / "out" / "runs.shard-0-of-2.jsonl")) ==
        std::vector<int64_t>{0, 2});
  CHECK(points_of(read_jsonl(dir / "out" / "runs.shard-1-of-2.jsonl")) == std::vector<int64_t>{1});
  const auto rep = run_kldq("report " + (dir / "out").string() + " --format json --no-plots");
  INFO(rep.err);
  REQUIRE(rep.rc == 0);
  const auto j = nlohmann::json::parse(rep.out);
  CHECK(points_of(j["runs"].get<std::vector<nlohmann::json>>()) == std::vector<int64_t>{0, 1, 2});
  // int8 keeps more than nf4: an invariant of the formats, on a real trained model.
  CHECK(j["runs"][1]["kl_mean"].get<double>() < j["runs"][0]["kl_mean"].get<double>());

  // Another configuration into the same directory (one base fewer): its stages are all found,
  // nothing is computed, and the report keeps only this configuration's points.
  std::string fewer = config;
  fewer.replace(fewer.find("[nf4, int8, fp8_e4m3]"), 21, "[int8, nf4]");
  kldq::test::write_text(dir / "fewer.yaml", fewer);
  const auto again = run_kldq("run " + (dir / "fewer.yaml").string());
  INFO(again.err);
  REQUIRE(again.rc == 0);
  CHECK_THAT(again.err, HasText("eval point 0 (int8 rtn uniform): reused") &&
                            HasText("eval point 1 (nf4 rtn uniform): reused") && !HasText(" s\n"));
  // Its own runs file has both records, made from the found evaluations.
  CHECK(read_jsonl(dir / "out" / "runs.jsonl").size() == 2);
  const auto j2 = nlohmann::json::parse(
      run_kldq("report " + (dir / "out").string() + " --format json --no-plots").out);
  REQUIRE(j2["runs"].size() == 2);
  CHECK(j2["runs"][0]["base"] == "int8");
  CHECK(j2["runs"][0]["kl_mean"] == j["runs"][1]["kl_mean"]);
  // A missing data file: exit 2 naming the key, before the output directory exists.
  std::string missing = config;
  missing.replace(missing.find("wiki.test.head.txt"), 18, "no-such-file.txt");
  missing.replace(missing.find("/out'"), 5, "/out2'");
  kldq::test::write_text(dir / "missing.yaml", missing);
  const auto m = run_kldq("run " + (dir / "missing.yaml").string());
  CHECK(m.rc == 2);
  CHECK_THAT(m.err, HasText("data.ppl: no such file"));
  CHECK(!fs::exists(dir / "out2"));
  // Values a later stage would refuse stop the run before any work too: calibration windows
  // beyond the model's positions or its calibration text, an evaluation context beyond them.
  auto refused = [&](const std::string& from, const std::string& to, const std::string& what) {
    std::string text = config;
    text.replace(text.find(from), from.size(), to);
    text.replace(text.find("/out'"), 5, "/out3'");
    kldq::test::write_text(dir / "late.yaml", text);
    const auto r = run_kldq("run " + (dir / "late.yaml").string());
    INFO(r.err);
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText(what));
    CHECK(!fs::exists(dir / "out3"));
  };
  const std::string calib = (kSource / "data/demo/wiki.test.head.txt").string();
  const std::string uniform = fmt::format(
      "data: {{ppl: '{}'}}\nsweep: {{planner: uniform, base: [nf4, int8, fp8_e4m3]}}", calib);
  auto profiled = [&](const std::string& windows) {
    return fmt::format(
        "data: {{ppl: '{}', calib: '{}'}}\ncalibration: {}\n"
        "sweep: {{restore_top: 10, base: nf4}}",
        calib, calib, windows);
  };
  refused(uniform, profiled("{samples: 4, seq_len: 1000000}"),
          "calibration.seq_len: 1000000 exceeds");
  refused(uniform, profiled("{samples: 100000, seq_len: 256}"),
          "calibration (model " + model.string() + "): calibration file");
  refused("eval: {ctx: 256", "eval: {ctx: 1000000", "eval.ctx: 1000000 exceeds");

  // Report errors: not a results directory (2), a bad format (2), a damaged runs file (1, naming
  // the file and line).
  CHECK(run_kldq("report " + (dir / "nowhere").string()).rc == 2);
  CHECK(run_kldq("report " + (dir / "out").string() + " --format xml").rc == 2);
  kldq::test::write_text(dir / "out" / "runs.jsonl", "{\"point\": 0, \"model_id\": \"x\"}\n{\"poi");
  const auto torn = run_kldq("report " + (dir / "out").string() + " --no-plots");
  CHECK(torn.rc == 1);
  CHECK_THAT(torn.err, HasText("runs.jsonl:2"));
}

TEST_CASE("kldq run: Experiment 2 (rtn, gptq, awq, each restored from its own profile)",
          "[experiment][run]") {
  kldq::test::TempDir dir("run-methods");
  const std::string config = fmt::format(
      R"(name: methods
models: ['{}']
data: {{calib: '{}', ppl: '{}'}}
calibration: {{samples: 8, seq_len: 128}}
profile: {{mode: restore-one}}
sweep: {{base: int4_g64, method: [rtn, gptq, awq], planner: [uniform, restore-top],
        restore_top: 20, by: params}}
eval: {{ctx: 256, kld: true}}
output: '{}'
)",
      (kSource / "models" / "wikitext-qwen2-4m").string(),
      (kSource / "data/demo/wiki.test.tail.txt").string(),
      (kSource / "data/demo/wiki.test.head.txt").string(), (dir / "out").string());
  kldq::test::write_text(dir / "e.yaml", config);
  const auto r = run_kldq("run " + (dir / "e.yaml").string() + " --device cpu");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const auto runs = read_jsonl(dir / "out" / "runs.jsonl");
  REQUIRE(runs.size() == 6);
  std::map<std::string, double> kl;  // "method planner" -> KL
  for (const auto& run : runs)
    kl[run["method"].get<std::string>() + " " + run["planner"].get<std::string>()] =
        run["kl_mean"].get<double>();
  INFO(nlohmann::json(kl).dump());
  CHECK(kl.at("gptq uniform") < kl.at("rtn uniform"));
  // Restoring 20 % of the parameters helps every method, AWQ included: its scales live in the
  // layers, so a restored layer is exactly the original.
  for (const char* m : {"rtn", "gptq", "awq"})
    CHECK(kl.at(std::string(m) + " restore-top") < kl.at(std::string(m) + " uniform"));
}
