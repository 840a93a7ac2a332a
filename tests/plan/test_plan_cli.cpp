// Issue 6's acceptance on the real trained stories260K model: profiles from WikiText-2
// validation, plans from them, and the plans' KL measured by `kldq eval` on WikiText-2 test
// text. Restoring the top 20 % by KL beats restoring a random 20 % (five seeds) and uniform NF4;
// the budget planner at the bits per weight of "top 20 % by params" does no worse than it.
// Also the command's errors and the model check of `--plan`.
#include <fmt/format.h>

#include "support/catch.hpp"

using kldq::test::read_text;
using kldq::test::run_kldq;

namespace {

struct Setup {
  std::string model, calib, test, dir;
};

nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(read_text(path));
}

// Writes plan `name` from `args`; returns its JSON.
nlohmann::json make_plan(const Setup& s, const std::string& name, const std::string& args) {
  const std::string out = s.dir + "/" + name + ".json";
  const auto r = run_kldq("plan " + args + " -o " + out);
  INFO(args << "\n" << r.err);
  REQUIRE(r.rc == 0);
  return read_json(out);
}

// kldq eval --plan on the test text: metrics.json.
nlohmann::json eval_plan(const Setup& s, const std::string& name) {
  const std::string out = s.dir + "/eval_" + name + ".json";
  const auto r =
      run_kldq(fmt::format("eval {} --plan {}/{}.json --ppl {} --kld --batch 8 "
                           "--device cpu -o {}",
                           s.model, s.dir, name, s.test, out));
  INFO(name << "\n" << r.err);
  REQUIRE(r.rc == 0);
  return read_json(out);
}

double kl(const nlohmann::json& metrics) {
  return metrics["kl_mean"].get<double>();
}

}  // namespace

TEST_CASE("plans from stories260K profiles: top 20% beats random and uniform", "[plan][cli]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto calib = kldq::test::shared_data("wikitext-2/valid.tokenized.txt");
  const auto test = kldq::test::shared_data("wikitext-2/wiki.test.raw");
  if (!model || !calib || !test) KLDQ_SKIP("../shared/data not present");
  kldq::test::TempDir dir("plan");
  // The first 200,000 characters of the test set (125k tokens): the full set gives the same
  // ordering (issue 6's note) at six times the time.
  const std::string text = read_text(*test).substr(0, 200000);
  kldq::test::write_text(dir / "test.txt", text);
  const Setup s{model->string(), calib->string(), (dir / "test.txt").string(), dir.path().string()};
  for (const std::string base : {"nf4", "int8"}) {
    const auto r =
        run_kldq(fmt::format("profile {} --base {} --calib {} --samples 32 --seq-len 256 "
                             "--device cpu -o {}/{}.json",
                             s.model, base, s.calib, s.dir, base));
    INFO(r.err);
    REQUIRE(r.rc == 0);
  }
  const std::string nf4 = s.dir + "/nf4.json", int8 = s.dir + "/int8.json";
  const auto profile = read_json(nf4);
  CHECK(profile["model_fingerprint"].get<std::string>().size() == 64);

  const auto top = make_plan(s, "top", nf4 + " --restore-top 20%");
  CHECK(top["overrides"].size() == 7);  // 20 % of 35 units
  const double kl_top = kl(eval_plan(s, "top"));
  make_plan(s, "uniform", nf4 + " --uniform");
  const double kl_uniform = kl(eval_plan(s, "uniform"));
  double kl_random = 0;
  for (int seed = 1; seed <= 5; ++seed) {
    const std::string name = fmt::format("random{}", seed);
    make_plan(s, name, fmt::format("{} --random 20% --seed {}", nf4, seed));
    kl_random += kl(eval_plan(s, name)) / 5;
  }
  INFO("KL top 20% " << kl_top << ", random 20% " << kl_random << ", uniform " << kl_uniform);
  CHECK(kl_top < kl_random);
  CHECK(kl_random < kl_uniform);

  // The budget planner at the bits per weight of the top 20 % by params, over nf4 and bf16, then
  // with int8 as a third candidate.
  const auto by_params = make_plan(s, "params", nf4 + " --restore-top 20% --by params");
  const double bpw = by_params["planner"]["bits_per_weight"].get<double>();
  const auto params_metrics = eval_plan(s, "params");
  const std::string budget = fmt::format(" --budget-bpw {:.17g}", bpw);
  const auto b1 = make_plan(s, "budget", nf4 + budget + " --candidates nf4,bf16");
  CHECK(b1["planner"]["bits_per_weight"].get<double>() <= bpw);
  CHECK(b1["planner"]["predicted_kl"].get<double>() <=
        by_params["planner"]["predicted_kl"].get<double>());
  const auto budget_metrics = eval_plan(s, "budget");
  INFO("KL by params " << kl(params_metrics) << ", budget " << kl(budget_metrics));
  CHECK(kl(budget_metrics) <= kl(params_metrics));
  // eval reports the plan's prediction beside the measured KL.
  CHECK(budget_metrics["plan_predicted_kl"] == b1["planner"]["predicted_kl"]);
  make_plan(s, "budget3", nf4 + " " + int8 + budget);
  CHECK(kl(eval_plan(s, "budget3")) < kl(budget_metrics));
}

TEST_CASE("kldq plan: errors name the option, no output is left behind", "[plan][cli]") {
  kldq::test::TempDir dir("plan-errors");
  // A profile of the tiny synthetic model, written by hand in the profile.json schema.
  const auto tiny = kldq::test::tiny_model();
  nlohmann::json units = nlohmann::json::array();
  for (int b = 0; b < 2; ++b)
    for (const char* p : {"self_attn.q_proj", "mlp.down_proj"})
      units.push_back({{"id", fmt::format("model.layers.{}.{}", b, p)},
                       {"params", 4096},
                       {"bytes_base", 2304},
                       {"bytes_bf16", 8192},
                       {"kl_mean", 0.01 * (b + 1)},
                       {"kl_stderr", 0.001}});
  const nlohmann::json profile = {
      {"mode", "quantize-one"}, {"granularity", "linear"},
      {"base", "nf4"},          {"method", "rtn"},
      {"model", "elsewhere"},   {"model_fingerprint", std::string(64, '0')},
      {"calibration", {}},      {"baseline_kl", 0.05},
      {"units", units}};
  const std::string p = (dir / "profile.json").string(), out = (dir / "plan.json").string();
  kldq::test::write_text(p, profile.dump());
  auto fails = [&](const std::string& args, const std::string& text) {
    const auto r = run_kldq("plan " + p + " " + args + " -o " + out);
    INFO(args << "\n" << r.err);
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText(text));
    CHECK_FALSE(kldq::test::fs::exists(out));
  };
  fails("", "give exactly one of --restore-top, --budget-bpw, --uniform and --random");
  fails("--uniform --restore-top 10", "excludes");
  fails("--random 10 --seed 1 --budget-bpw 4", "excludes");
  fails("--restore-top ten", "--restore-top ten: expected a percentage from 0 to 100");
  fails("--random 20%", "--random: needs --seed");
  fails("--uniform --by params", "--by: only with --restore-top or --random");
  fails("--restore-top 20 --by size", "--by: unknown basis 'size' (one of: count, params)");
  fails("--budget-bpw 99", "--budget-bpw 99: out of range");
  fails("--budget-bpw 8 --candidates nf4,int4_g128,bf16", "no profile with base int4_g128");
  fails("--uniform --candidates nf4", "--candidates: only with --budget-bpw");

  // A plan from another model's profile is refused by eval and quantize.
  auto r = run_kldq("plan " + p + " --restore-top 50% -o " + out);
  REQUIRE(r.rc == 0);
  r = run_kldq("eval " + tiny.string() + " --plan " + out + " --ppl " + p + " --device cpu -o " +
               (dir / "m.json").string());
  CHECK(r.rc == 2);
  CHECK_THAT(r.err, HasText("made from a profile of elsewhere, a different model than"));
  CHECK_FALSE(kldq::test::fs::exists(dir / "m.json"));
  r = run_kldq("quantize " + tiny.string() + " --plan " + out + " -o " + (dir / "q").string());
  CHECK(r.rc == 2);
  CHECK_THAT(r.err, HasText("checkpoint fingerprints differ"));
  // Without the fingerprint (a hand-edited plan) the plan applies, and its overrides resolve.
  auto plan = read_json(out);
  plan["planner"].erase("model_fingerprint");
  kldq::test::write_text(out, plan.dump());
  r = run_kldq("quantize " + tiny.string() + " --plan " + out + " -o " + (dir / "q").string());
  INFO(r.err);
  CHECK(r.rc == 0);
}
