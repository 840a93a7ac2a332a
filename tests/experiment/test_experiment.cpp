// Experiment files: defaults, sweep expansion against hand-counted products, one test per
// schema error class naming its key path, stage keys and sharding, and `kldq run --dry-run` on
// every shipped config.
#include <filesystem>

#include "kldq/core/error.hpp"
#include "kldq/experiment/config.hpp"
#include "support/catch.hpp"

namespace ex = kldq::experiment;
namespace fs = std::filesystem;
using kldq::test::run_kldq;

namespace {

ex::Experiment load_text(const kldq::test::TempDir& dir, const std::string& name,
                         const std::string& text) {
  kldq::test::write_text(dir / name, text);
  return ex::load_experiment((dir / name).string());
}

// The ConfigError message of loading `text`, or "" when it loads.
std::string error_of(const kldq::test::TempDir& dir, const std::string& text) {
  try {
    load_text(dir, "bad.yaml", text);
  } catch (const kldq::ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("experiment: defaults, sweep product and de-duplication", "[experiment]") {
  kldq::test::TempDir dir("exp");
  const auto e = load_text(dir, "e.yaml", R"(
name: t
models: [m1, m2]
sweep:
  base: [nf4, int8]
  granularity: [linear, block]
  restore_top: [0, "10%", 20]
)");
  CHECK(e.name == "t");
  CHECK(e.output == "results/t");
  CHECK(e.samples == 128);
  CHECK(e.seq_len == 512);
  CHECK(e.eval.ppl_protocol == kldq::eval::PplProtocol::GPTQ);
  // 2 bases x 2 granularities x 3 percentages, restore-top by count (the defaults), in order.
  REQUIRE(e.points.size() == 12);
  CHECK(e.points[0].to_json() == nlohmann::json::parse(R"({"base":"nf4","method":"rtn",
        "planner":"restore-top","granularity":"linear","mode":"quantize-one","percent":0.0,
        "by":"count"})"));
  CHECK(*e.points[1].percent == 10.0);
  CHECK(e.points[3].granularity == kldq::profile::Granularity::BLOCK);
  CHECK(e.points[6].base == "int8");
  // Uniform points use no percentage or granularity: six sweep values collapse to one point
  // per base.
  const auto u = load_text(dir, "u.yaml", R"(
name: u
sweep: {planner: uniform, base: [nf4, fp8_e4m3], restore_top: [1, 2, 3]}
)");
  REQUIRE(u.points.size() == 2);
  CHECK(u.points[1].to_json() ==
        nlohmann::json::parse(R"({"base":"fp8_e4m3","method":"rtn","planner":"uniform"})"));
  // JSON is read by the same schema.
  const auto j = load_text(dir, "e.json",
                           R"({"name": "t", "sweep": {"planner": "random", "restore_top": 5,
                               "seed": [1, 2]}})");
  REQUIRE(j.points.size() == 2);
  CHECK(*j.points[1].seed == 2);
  CHECK(j.points[1].by == kldq::plan::By::COUNT);
}

TEST_CASE("experiment: each schema error names the file and key path", "[experiment]") {
  kldq::test::TempDir dir("exp-err");
  const std::string file = (dir / "bad.yaml").string();
  auto has = [&](const std::string& yaml, const std::string& what) {
    const std::string err = error_of(dir, yaml);
    INFO(yaml << " -> " << err);
    CHECK_THAT(err, HasText(file + ": " + what));
  };
  has("name: x\ncolour: red\n", "colour: unknown key (expected one of name, models");
  has("name: x\neval: {ppl_protcol: gptq}\n", "eval.ppl_protcol: unknown key");
  has("models: [a]\n", "name: expected a string, got nothing");
  has("name: x\ncalibration: {samples: many}\n",
      "calibration.samples: expected an integer >= 1, got \"many\"");
  has("name: x\ncalibration: {seq_len: 1.5}\n", "calibration.seq_len: expected an integer >= 2");
  has("name: x\nsweep: {restore_top: [1, 5, ten]}\n",
      "sweep.restore_top[2]: expected a percentage from 0 to 100, got \"ten\"");
  has("name: x\nsweep: {restore_top: 150}\n", "sweep.restore_top: expected a percentage");
  has("name: x\nsweep: {base: [nf4, nf5]}\n", "sweep.base[1]: expected a format name");
  has("name: x\nsweep: {base: []}\n",
      "sweep.base: expected a value or a non-empty list, got a list");
  has("name: x\nprofile: {method: hq}\n", "profile.method: expected one of rtn, hqq, gptq, awq");
  has("name: x\nsweep: {method: hqq, base: nf4}\n", "base nf4 with method hqq: hqq quantizes");
  has("name: x\neval: {tasks: [piqa]}\n", "eval.tasks: needs data.tasks");
  has("name: x\ndata: {tasks: mc}\n", "data.tasks: needs eval.tasks");
  has("name: x\ndata: {tasks: mc}\neval: {tasks: piqa, tasks_limit: -1}\n",
      "eval.tasks_limit: expected an integer >= 0");
  has("name: x\nsweep: {method: gptq, base: int4_g64_fz}\n",
      "base int4_g64_fz with method gptq: hqq quantizes");
  CHECK(load_text(dir, "hqq.yaml", "name: x\nsweep: {method: hqq, base: int2_g32_fz}\n")
            .points.size() == 1);
  // With hqq an int group format stands for its _fz variant (base and candidates alike).
  {
    const auto m = load_text(dir, "m.yaml",
                             "name: x\nplan: {candidates: [int4_g64, bf16]}\n"
                             "sweep: {method: [rtn, hqq], base: int3_g64, budget_bpw: 4}\n");
    REQUIRE(m.points.size() == 2);
    CHECK(m.points[0].base == "int3_g64");
    CHECK(m.points[1].base == "int3_g64_fz");
  }
  has("name: x\nplan: {candidates: [int4_g64, fp8_e4m3]}\n"
      "sweep: {method: hqq, base: int3_g64, budget_bpw: 4}\n",
      "plan.candidates: fp8_e4m3 with method hqq: hqq quantizes");
  has("name: x\nplan: {candidates: int4_g64_fz}\nsweep: {base: nf4, budget_bpw: 5}\n",
      "plan.candidates: int4_g64_fz with method rtn");
  // A list of sweeps: their points joined in order, duplicates once.
  {
    const auto l = load_text(dir, "l.yaml", R"(
name: x
sweep:
  - {base: [nf4, int8], planner: uniform}
  - {base: int8, planner: [uniform, restore-top], restore_top: 10}
)");
    REQUIRE(l.points.size() == 3);
    CHECK(l.points[0].base == "nf4");
    CHECK(l.points[1].to_json() ==
          nlohmann::json::parse(R"({"base":"int8","method":"rtn","planner":"uniform"})"));
    CHECK(l.points[2].planner == kldq::plan::Strategy::RESTORE_TOP);
  }
  has("name: x\nplan: {candidates: int4_g64}\nsweep: {base: nf4, budget_bpw: 5, mode: "
      "restore-one}\n",
      "a budget point over plan.candidates needs profile mode quantize-one");
  has("name: x\nsweep: []\n", "sweep: expected a mapping or a non-empty list of mappings");
  has("name: x\nsweep:\n  - {base: nf4}\n  - {bass: nf4}\n", "sweep[1].bass: unknown key");
  has("name: x\nsweep: {planner: teleport}\n", "sweep.planner: expected one of restore-top");
  has("name: x\nsweep: {planner: restore-top}\n", "sweep.restore_top: needed by the restore-top");
  has("name: x\nsweep: {budget_bpw: -1}\n", "sweep.budget_bpw: expected bits per weight");
  has("name: x\neval: {kld: maybe}\n", "eval.kld: expected true or false, got \"maybe\"");
  has("name: x\neval: [1]\n", "eval: expected a mapping, got a list");
  has("", "expected a mapping, got nothing");  // an empty file
  has("name: x\nmax_gpu_memory: 22XB\n",
      "max_gpu_memory 22XB: expected a positive size such as 22GiB");
  const auto e = load_text(dir, "budget.yaml", "name: x\nmax_gpu_memory: 22GiB\n");
  CHECK(e.max_gpu_memory == "22GiB");
  CHECK(e.resolved()["max_gpu_memory"] == "22GiB");
  CHECK_FALSE(load_text(dir, "none.yaml", "name: x\n").resolved().contains("max_gpu_memory"));
  has("name: x\ncalibration: {samples: 1e30}\n", "calibration.samples: expected an integer");
  // A sweep is bounded before it is expanded: 3 x 100 x 100 x 100 points, refused with the count.
  {
    std::string many = "name: x\nsweep:\n  base: [nf4, int8, fp8_e4m3]\n";
    for (const char* k : {"restore_top", "seed"}) {
      many += std::string("  ") + k + ": [";
      for (int i = 0; i < 100; ++i) many += (i ? ", " : "") + std::to_string(i % 100);
      many += "]\n";
    }
    has(many, "sweep: 30000 points; at most 10000");
  }
  // Nesting beyond yaml-cpp's limit is an error, not a stack overflow.
  CHECK_THAT(error_of(dir, "name: x\nmodels: " + std::string(100000, '[') + "\n"),
             HasText(file + ":"));
  // A key that is not a string: file, line and column.
  CHECK_THAT(error_of(dir, "name: x\n[a, b]: 1\n"), HasText(file + ":2:1: bad conversion"));
  // YAML syntax: file, line and column.
  CHECK_THAT(error_of(dir, "name: [x\n"), HasText(file + ":2:1: end of sequence"));
  CHECK_THROWS_AS(ex::load_experiment((dir / "absent.yaml").string()), kldq::ConfigError);
}

TEST_CASE("experiment: stages, their keys, and shards", "[experiment]") {
  kldq::test::TempDir dir("exp-stages");
  const std::string sweep = R"(
sweep:
  planner: [uniform, restore-top, budget]
  restore_top: [5, 10]
  budget_bpw: 5
plan: {candidates: [int8, bf16]}
)";
  const auto e = load_text(dir, "e.yaml", "name: s\ndata: {calib: c.txt, ppl: p.txt}" + sweep);
  // uniform (1) + restore-top x {5, 10} (2) + budget (1).
  REQUIRE(e.points.size() == 4);
  const auto all = ex::shard_points(e, {});
  const nlohmann::json cpu = {{"device", "cpu"}, {"dtype", "fp32"}};
  const auto st = ex::plan_stages(e, "m", "fp", all, cpu);
  std::vector<std::string> kinds;
  for (const auto& s : st) kinds.push_back(s.kind);
  // reference; profiles nf4 (shared by both restore-top points and budget) and int8 (budget's
  // candidate; bf16 needs none); then plan + eval per point.
  CHECK(kinds == std::vector<std::string>{"reference", "profile", "profile", "plan", "eval", "plan",
                                          "eval", "plan", "eval", "plan", "eval"});
  CHECK(st[1].inputs["base"] == "nf4");
  CHECK(st[2].inputs["base"] == "int8");
  CHECK(st[3].inputs["profiles"].empty());  // uniform
  CHECK(st[5].inputs["profiles"] == nlohmann::json({st[1].key}));
  CHECK(st[9].inputs["profiles"] == nlohmann::json({st[1].key, st[2].key}));
  std::set<std::string> keys;
  for (const auto& s : st) keys.insert(s.key);
  CHECK(keys.size() == st.size());  // distinct work, distinct keys
  // Keys depend on the inputs' identity only: the same model id gives the same keys, another
  // model id other keys.
  CHECK(ex::plan_stages(e, "elsewhere", "fp", all, cpu)[1].key == st[1].key);
  CHECK(ex::plan_stages(e, "m", "fp2", all, cpu)[1].key != st[1].key);
  // ... and on the computation: bf16 on a GPU is other work than fp32 on the CPU.
  const nlohmann::json gpu = {{"device", "cuda"}, {"dtype", "bf16"}};
  CHECK(ex::plan_stages(e, "m", "fp", all, gpu)[1].key != st[1].key);
  // Shards partition the points.
  std::vector<size_t> seen;
  for (int i = 0; i < 3; ++i)
    for (size_t p :
         ex::shard_points(e, kldq::parse_shard(std::to_string(i) + "/3", "--shard", "points")))
      seen.push_back(p);
  std::sort(seen.begin(), seen.end());
  CHECK(seen == all);
  CHECK(ex::shard_points(e, kldq::parse_shard("3/4", "--shard", "points")).size() == 1);
  CHECK(ex::plan_stages(e, "m", "fp", {}, cpu).size() == 1);  // an empty shard: the reference only
  // Zero-shot tasks are part of every evaluation's identity (reference included).
  const auto et = load_text(dir, "t.yaml",
                            "name: s\ndata: {calib: c.txt, ppl: p.txt, tasks: mc}\n"
                            "eval: {tasks: [piqa, boolq], tasks_limit: 10}" +
                                sweep);
  CHECK(et.eval.tasks == std::vector<std::string>{"piqa", "boolq"});
  const auto stt = ex::plan_stages(et, "m", "fp", all, cpu);
  CHECK(stt[0].key != st[0].key);
  CHECK(stt[1].key == st[1].key);  // profiles do not evaluate tasks
  CHECK(stt[4].key != st[4].key);
  // Keyed by the selected tasks' files only: another file in the directory changes nothing.
  fs::create_directories(dir / "mc/piqa");
  kldq::test::write_text(dir / "mc/piqa/valid.jsonl", "{}\n");
  kldq::test::write_text(dir / "mc/piqa/valid-labels.lst", "0\n");
  const auto etd =
      load_text(dir, "d.yaml",
                "name: s\ndata: {calib: c.txt, ppl: p.txt, tasks: " + (dir / "mc").string() +
                    "}\neval: {tasks: piqa}" + sweep);
  const std::string before = ex::plan_stages(etd, "m", "fp", all, cpu)[0].key;
  kldq::test::write_text(dir / "mc/other.jsonl", "{}\n");
  CHECK(ex::plan_stages(etd, "m", "fp", all, cpu)[0].key == before);
  kldq::test::write_text(dir / "mc/piqa/valid-labels.lst", "1\n");
  CHECK(ex::plan_stages(etd, "m", "fp", all, cpu)[0].key != before);
  // Decode speed keys the evaluations (a measurement: turning it on runs them again), not the
  // profiles; off, the keys are those of an experiment that never heard of it.
  const auto es = load_text(
      dir, "s.yaml", "name: s\ndata: {calib: c.txt, ppl: p.txt}\neval: {speed: true}" + sweep);
  CHECK(es.eval.speed);
  const auto sts = ex::plan_stages(es, "m", "fp", all, cpu);
  CHECK(sts[0].key != st[0].key);
  CHECK(sts[1].key == st[1].key);
  CHECK(sts[4].key != st[4].key);
  const auto eo = load_text(
      dir, "o.yaml", "name: s\ndata: {calib: c.txt, ppl: p.txt}\neval: {speed: false}" + sweep);
  CHECK(ex::plan_stages(eo, "m", "fp", all, cpu)[4].key == st[4].key);
  for (const char* bad : {"3/3", "1", "a/b", "-1/2", "0/0", "0.5/2"})
    CHECK_THROWS_AS(kldq::parse_shard(bad, "--shard", "points"), kldq::ConfigError);
}

TEST_CASE("kldq run --dry-run on every shipped config; a run checks its data first",
          "[experiment][cli]") {
  const std::filesystem::path configs = std::filesystem::path(KLDQ_SOURCE_DIR) / "configs";
  int n = 0;
  for (const auto& f : std::filesystem::directory_iterator(configs)) {
    if (f.path().extension() != ".yaml") continue;
    ++n;
    const auto r = run_kldq("run " + f.path().string() + " --dry-run");
    INFO(f.path() << "\n" << r.err);
    CHECK(r.rc == 0);
    CHECK_THAT(r.out, HasText("sweep points") && HasText("  eval  "));
  }
  CHECK(n >= 5);
  const std::string exp1 = (configs / "exp1_sensitivity.yaml").string();
  // 2 bases x 2 granularities x 6 percentages; --model replaces the placeholder, shard 1/4.
  const auto r = run_kldq("run " + exp1 + " --dry-run --shard 1/4 --model " +
                          kldq::test::tiny_model().string());
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, HasText("24 sweep points, shard 1/4: 6"));
  CHECK_THAT(r.out, !HasText("not found"));
  // The shipped data paths are placeholders too: a real run stops before any work, naming the
  // key (the dry run above keyed them by path).
  const auto no = run_kldq("run " + exp1 + " --model " + kldq::test::tiny_model().string());
  CHECK(no.rc == 2);
  CHECK_THAT(no.err, HasText("data.ppl: no such file data/wikitext-2/wiki.test.raw"));
  const auto bad = run_kldq("run " + exp1 + " --dry-run --shard 4/4");
  CHECK(bad.rc == 2);
  CHECK_THAT(bad.err, HasText("--shard 4/4"));
}
