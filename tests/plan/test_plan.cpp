// Planners: the knapsack against exhaustive search, each strategy on a hand-made profile with
// hand-derived selections and predictions, and the errors for inconsistent profiles and
// impossible requests.
#include <algorithm>
#include <limits>
#include <random>
#include <set>

#include "kldq/plan/planner.hpp"
#include "support/catch.hpp"

namespace plan = kldq::plan;

namespace {

// Exhaustive minimum of the summed cost with the summed weight <= capacity (inf when none).
double brute_force(const std::vector<std::vector<double>>& cost,
                   const std::vector<std::vector<uint64_t>>& weight, uint64_t capacity) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<size_t> k(cost.size(), 0);
  while (true) {
    double c = 0;
    uint64_t w = 0;
    for (size_t i = 0; i < k.size(); ++i) c += cost[i][k[i]], w += weight[i][k[i]];
    if (w <= capacity) best = std::min(best, c);
    size_t i = 0;
    while (i < k.size() && ++k[i] == cost[i].size()) k[i++] = 0;
    if (i == k.size()) return best;
  }
}

struct Instance {
  std::vector<std::vector<double>> cost;
  std::vector<std::vector<uint64_t>> weight;
};

Instance random_instance(std::mt19937_64& gen, size_t items, size_t options, uint64_t scale) {
  Instance in;
  std::uniform_real_distribution<double> c(0, 1);
  std::uniform_int_distribution<uint64_t> w(1, scale);
  for (size_t i = 0; i < items; ++i) {
    in.cost.emplace_back();
    in.weight.emplace_back();
    for (size_t k = 0; k < options; ++k)
      in.cost[i].push_back(c(gen)), in.weight[i].push_back(w(gen));
  }
  return in;
}

double total(const Instance& in, const std::vector<size_t>& pick, uint64_t* weight) {
  double c = 0;
  *weight = 0;
  for (size_t i = 0; i < pick.size(); ++i)
    c += in.cost[i][pick[i]], *weight += in.weight[i][pick[i]];
  return c;
}

// Four units; sensitivities 0.1, 0.4, 0.2, 0.3 at 4 bits per weight (no scales, to keep the
// arithmetic by hand simple) and, in the second profile, a tenth of that at 8 bits.
plan::Profile profile(const std::string& base, double scale, double bytes_per_param) {
  plan::Profile p;
  p.path = base + ".json";
  p.model = "m";
  p.fingerprint = "f";
  p.mode = kldq::profile::Mode::QUANTIZE_ONE;
  p.granularity = kldq::profile::Granularity::LINEAR;
  p.base = base;
  p.method = kldq::quant::Method::RTN;
  p.calibration.emplace().sha256 = "c";
  p.baseline_kl = 1.0 * scale;
  const double kl[] = {0.1, 0.4, 0.2, 0.3};
  const uint64_t params[] = {100, 300, 200, 400};
  for (int i = 0; i < 4; ++i)
    p.units.push_back({"u" + std::to_string(i), params[i],
                       static_cast<uint64_t>(bytes_per_param * double(params[i])), 2 * params[i],
                       kl[i] * scale, 0.001});
  return p;
}

std::vector<std::string> formats_of(const kldq::quant::Plan& p) {
  std::vector<std::string> out;
  for (const auto& [unit, format] : p.planner->unit_formats.value()) out.push_back(format);
  return out;
}

}  // namespace

TEST_CASE("knapsack: optimal against exhaustive search", "[plan]") {
  std::mt19937_64 gen(7);
  for (int trial = 0; trial < 200; ++trial) {
    const Instance in = random_instance(gen, 1 + trial % 6, 1 + trial % 4, 50);
    uint64_t lo = 0, hi = 0;
    for (const auto& w : in.weight)
      lo += *std::min_element(w.begin(), w.end()), hi += *std::max_element(w.begin(), w.end());
    const uint64_t cap = lo + (hi - lo) * static_cast<uint64_t>(trial % 5) / 4;
    const auto pick = plan::solve_knapsack(in.cost, in.weight, cap);
    REQUIRE(pick.size() == in.cost.size());
    uint64_t w = 0;
    CHECK(total(in, pick, &w) == Approx(brute_force(in.cost, in.weight, cap)).margin(1e-12));
    CHECK(w <= cap);
    if (lo > 0) CHECK(plan::solve_knapsack(in.cost, in.weight, lo - 1).empty());
  }
  // Weights too fine for exact steps: still feasible, and no worse than the optimum with the
  // capacity reduced by one quantum (spare / 2^18, rounded up) per item.
  for (int trial = 0; trial < 30; ++trial) {
    const Instance in = random_instance(gen, 6, 3, uint64_t{1} << 40);
    uint64_t lo = 0, hi = 0;
    for (const auto& w : in.weight)
      lo += *std::min_element(w.begin(), w.end()), hi += *std::max_element(w.begin(), w.end());
    const uint64_t cap = lo + (hi - lo) / 2, quantum = ((cap - lo) >> 18) + 1;
    uint64_t w = 0;
    const double got = total(in, plan::solve_knapsack(in.cost, in.weight, cap), &w);
    CHECK(w <= cap);
    CHECK(got <= brute_force(in.cost, in.weight, cap - 6 * quantum) + 1e-12);
  }
}

TEST_CASE("planner: restore-top, uniform and random on a hand-made profile", "[plan]") {
  const std::vector<plan::Profile> nf4 = {profile("nf4", 1.0, 0.5)};
  plan::Request r;
  r.strategy = plan::Strategy::RESTORE_TOP;
  r.percent = 50;
  auto p = plan::make_plan(nf4, r);  // by count: the two largest KL, u1 and u3
  CHECK(formats_of(p) == std::vector<std::string>{"nf4", "bf16", "nf4", "bf16"});
  CHECK(p.base.name() == "nf4");
  REQUIRE(p.overrides.size() == 2);
  CHECK(p.overrides[0].layers.pattern() == "u1");
  CHECK(p.planner->predicted_kl.value() == Approx(1.0 - 0.4 - 0.3));
  // bytes: u0 50 + u1 600 + u2 100 + u3 800 over 1000 params.
  CHECK(p.planner->bits_per_weight.value() == Approx(8.0 * 1550 / 1000));
  r.by = plan::By::PARAMS;  // 500 of 1000 params: u1 (300), u3 would overflow, u2 (500), not u0
  p = plan::make_plan(nf4, r);
  CHECK(formats_of(p) == std::vector<std::string>{"nf4", "bf16", "bf16", "nf4"});
  CHECK(p.planner->predicted_kl.value() == Approx(0.4));
  CHECK(p.planner->bits_per_weight.value() == Approx(10.0));
  CHECK(p.method_settings.is_null());  // a profile without recorded settings
  // A gptq profile's settings, and its calibration (the windows it fitted on), go into the plan.
  std::vector<plan::Profile> gptq = nf4;
  gptq[0].method = kldq::quant::Method::GPTQ;
  gptq[0].method_settings = {{"method", "gptq"},
                             {"gptq", {{"damp", 0.05}, {"block", 128}, {"act_order", true}}}};
  gptq[0].calibration = kldq::calib::CalibrationIdentity{"c.txt", "c", 8, 64, 1, 999};
  const auto pg = plan::make_plan(gptq, r);
  CHECK(pg.method == kldq::quant::Method::GPTQ);
  CHECK(pg.method_settings["gptq"]["damp"] == 0.05);
  CHECK(pg.method_settings["calibration"] == kldq::calib::to_json(*gptq[0].calibration));
  CHECK(pg.planner->calibration == gptq[0].calibration);
  // The plan reads back (quantize --plan) with the same settings.
  CHECK(kldq::quant::Plan::from_json(pg.to_json(), "plan.json").to_json() == pg.to_json());

  r = {};
  r.strategy = plan::Strategy::UNIFORM;
  p = plan::make_plan(nf4, r);
  CHECK(p.overrides.empty());
  CHECK(p.planner->predicted_kl.value() == 1.0);  // the measured baseline itself
  CHECK(p.planner->bits_per_weight.value() == Approx(4.0));

  r.strategy = plan::Strategy::RANDOM;
  r.percent = 50;
  std::set<std::vector<std::string>> seen;
  for (uint64_t seed = 0; seed < 12; ++seed) {
    r.seed = seed;
    const auto a = formats_of(plan::make_plan(nf4, r)), b = formats_of(plan::make_plan(nf4, r));
    CHECK(a == b);
    CHECK(std::count(a.begin(), a.end(), "bf16") == 2);
    seen.insert(a);
  }
  CHECK(seen.size() >= 3);  // 6 possible pairs; seeds must not all pick the same

  // restore-one: the cost is the KL gain, baseline - KL with the unit restored.
  plan::Profile ro = profile("nf4", 1.0, 0.5);
  ro.mode = kldq::profile::Mode::RESTORE_ONE;
  for (auto& u : ro.units) u.kl_mean = 1.0 - u.kl_mean;  // gains 0.1, 0.4, 0.2, 0.3
  r = {};
  r.strategy = plan::Strategy::RESTORE_TOP;
  r.percent = 25;
  p = plan::make_plan({ro}, r);
  CHECK(formats_of(p) == std::vector<std::string>{"nf4", "bf16", "nf4", "nf4"});
  CHECK(p.planner->predicted_kl.value() == Approx(0.6));
}

TEST_CASE("planner: bits-per-weight budget over several profiles", "[plan]") {
  const std::vector<plan::Profile> both = {profile("nf4", 1.0, 0.5), profile("int8", 0.1, 1.0)};
  plan::Request r;
  r.strategy = plan::Strategy::BUDGET;
  r.budget_bpw = 10;  // 1250 bytes. Hand-derived optimum: every unit int8 (1000 bytes, saves
  // 0.9), then the best bf16 upgrade in 250 bytes: u2 (+200 bytes, saves 0.02).
  auto p = plan::make_plan(both, r);
  CHECK(formats_of(p) == std::vector<std::string>{"int8", "int8", "bf16", "int8"});
  CHECK(p.base.name() == "int8");  // holds 800 of 1000 params
  CHECK(p.overrides.size() == 1);
  CHECK(p.planner->predicted_kl.value() == Approx(1.0 - 0.9 - 0.02));
  CHECK(p.planner->bits_per_weight.value() == Approx(8.0 * 1200 / 1000));
  // Only nf4 and bf16: the best restoration within 750 spare bytes is u1 + u2 (0.6).
  r.candidates = {"nf4", "bf16"};
  p = plan::make_plan(both, r);
  CHECK(formats_of(p) == std::vector<std::string>{"nf4", "bf16", "bf16", "nf4"});
  CHECK(p.planner->predicted_kl.value() == Approx(0.4));

  r.candidates = {"nf4", "fp8_e4m3", "bf16"};
  CHECK_THROWS_WITH(plan::make_plan(both, r),
                    HasText("--candidates fp8_e4m3: no profile with base fp8_e4m3"));
  r.candidates = {};
  r.budget_bpw = 3.9;
  CHECK_THROWS_WITH(plan::make_plan(both, r),
                    HasText("--budget-bpw 3.9: out of range; the candidates give 4.0000 to "
                            "16.0000 bits per weight"));
  r.budget_bpw = 16.5;
  CHECK_THROWS_WITH(plan::make_plan(both, r), HasText("out of range"));
  r.budget_bpw = 16;
  CHECK(plan::make_plan(both, r).planner->predicted_kl.value() == Approx(0.0));
}

TEST_CASE("planner: profiles must agree; malformed profiles name the key", "[plan]") {
  plan::Request r;
  r.strategy = plan::Strategy::BUDGET;
  r.budget_bpw = 8;
  auto other = profile("int8", 0.1, 1.0);
  other.fingerprint = "g";
  CHECK_THROWS_WITH(plan::make_plan({profile("nf4", 1, 0.5), other}, r),
                    HasText("int8.json: model fingerprint g differs from nf4.json's f"));
  other = profile("int8", 0.1, 1.0);
  other.calibration->sha256 = "d";
  CHECK_THROWS_WITH(plan::make_plan({profile("nf4", 1, 0.5), other}, r), HasText("calibration"));
  CHECK_THROWS_WITH(plan::make_plan({profile("nf4", 1, 0.5), profile("nf4", 1, 0.5)}, r),
                    HasText("a second profile with base nf4"));
  other = profile("int8", 0.1, 1.0);
  other.method_settings = {{"method", "rtn"}};
  CHECK_NOTHROW(plan::make_plan({profile("nf4", 1, 0.5), other}, r));  // one of an older kldq
  plan::Profile a = profile("nf4", 1, 0.5), b = profile("int8", 0.1, 1.0);
  a.method = b.method = kldq::quant::Method::GPTQ;
  a.method_settings = {{"method", "gptq"},
                       {"gptq", {{"damp", 0.01}, {"block", 128}, {"act_order", true}}}};
  b.method_settings = a.method_settings;
  b.method_settings["gptq"]["damp"] = 0.1;
  CHECK_THROWS_WITH(plan::make_plan({a, b}, r), HasText("method settings"));
  other = profile("int8", 0.1, 1.0);
  other.units.pop_back();
  CHECK_THROWS_WITH(plan::make_plan({profile("nf4", 1, 0.5), other}, r), HasText("3 units"));
  r.strategy = plan::Strategy::RESTORE_TOP;
  CHECK_THROWS_WITH(plan::make_plan({profile("nf4", 1, 0.5), profile("int8", 0.1, 1)}, r),
                    HasText("restore-top takes one profile, 2 given"));

  nlohmann::json j = {{"mode", "quantize-one"},
                      {"granularity", "linear"},
                      {"base", "nf4"},
                      {"method", "rtn"},
                      {"model", "m"},
                      {"model_fingerprint", "f"},
                      {"calibration", {}},
                      {"baseline_kl", 0.5},
                      {"units",
                       {{{"id", "model.layers.0.mlp.up_proj"},
                         {"params", 10},
                         {"bytes_base", 5},
                         {"bytes_bf16", 20},
                         {"kl_mean", 0.1},
                         {"kl_stderr", 0.01}}}}};
  CHECK(plan::Profile::from_json(j, "p.json").units.size() == 1);
  auto bad = j;
  // Unit ids are literal module names of the profile's granularity, never patterns.
  for (const char* id : {"*", "model.layers.*.mlp.up_proj", "model.layers.0.mlp", "a",
                         "model.layers.00.mlp.up_proj", "model.layers.0.mlp.up_proj.x"}) {
    bad["units"][0]["id"] = id;
    CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                      HasText("units[0].id: '" + std::string(id) + "' is not a linear unit"));
  }
  bad["granularity"] = "half-block";
  bad["units"][0]["id"] = "model.layers.0.mlp";
  CHECK(plan::Profile::from_json(bad, "p.json").units.size() == 1);
  bad["granularity"] = "block";
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"), HasText("not a block unit"));
  bad["units"][0]["id"] = "model.layers.12";
  CHECK(plan::Profile::from_json(bad, "p.json").units.size() == 1);
  bad = j;
  bad["units"][0].erase("kl_mean");
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                    HasText("p.json: units[0].kl_mean: missing"));
  bad = j;
  bad["units"][0]["params"] = "ten";
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                    HasText("units[0].params: expected a count, got \"ten\""));
  bad = j;
  bad.erase("model_fingerprint");
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"), HasText("model_fingerprint: missing"));
  bad = j;
  bad["method_settings"] = {{"method", "gptq"}};
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                    HasText("p.json: method_settings.method: gptq, but the method is rtn"));
  bad["method_settings"] = {{"method", "rtn"}, {"damp", 1}};
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                    HasText("p.json: method_settings.damp: unknown key"));
  // A gptq profile's calibration must be a calibration identity: plans carry it.
  bad["method"] = "gptq";
  bad["method_settings"] = {{"method", "gptq"}};
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                    HasText("p.json: calibration: expected an object"));
  bad["calibration"] = {{"sha256", "c"}};
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                    HasText("p.json: calibration.file: missing"));
  bad = j;
  bad["units"].push_back(bad["units"][0]);
  CHECK_THROWS_WITH(plan::Profile::from_json(bad, "p.json"),
                    HasText("unit model.layers.0.mlp.up_proj appears twice"));

  CHECK(plan::parse_percent("20%", "--x") == 20);
  CHECK(plan::parse_percent("12.5", "--x") == 12.5);
  CHECK(plan::parse_percent("0", "--x") == 0);
  for (const char* s : {"ten", "120%", "-1", "", "%", "20%%"})
    CHECK_THROWS_WITH(plan::parse_percent(s, "--restore-top"),
                      HasText("expected a percentage from 0 to 100"));
}

TEST_CASE("planner: predictions are valid KLs when unit KLs are not additive", "[plan]") {
  // Units whose KLs sum to twice the whole model's (sub-additive interactions), one restore-one
  // unit measured below zero: the additive model would predict 0.5 - 0.8 < 0 at 50 % restored.
  plan::Profile p = profile("nf4", 1.0, 0.5);
  p.baseline_kl = 0.5;  // unit costs 0.1, 0.4, 0.2, 0.3 sum to 1.0
  plan::Request r;
  r.strategy = plan::Strategy::RESTORE_TOP;
  double last = p.baseline_kl;
  for (double pct : {0.0, 25.0, 50.0, 75.0, 100.0}) {
    r.percent = pct;
    const double kl = plan::make_plan({p}, r).planner->predicted_kl.value();
    INFO(pct << " % -> " << kl);
    CHECK(kl >= 0);
    CHECK(kl <= last + 1e-15);  // monotone in what is restored
    last = kl;
  }
  r.percent = 50;  // u1 and u3 restored: 0.3 of the summed 1.0 stays -> 0.5 x 0.3
  CHECK(plan::make_plan({p}, r).planner->predicted_kl.value() == Approx(0.15));
  r.percent = 0;
  CHECK(plan::make_plan({p}, r).planner->predicted_kl.value() == Approx(0.5));
  r.percent = 100;
  CHECK(plan::make_plan({p}, r).planner->predicted_kl.value() == 0.0);
  // restore-one: a unit whose restoration raised KL (noise) counts 0, not a negative cost.
  plan::Profile ro = p;
  ro.mode = kldq::profile::Mode::RESTORE_ONE;
  for (auto& u : ro.units) u.kl_mean = 0.5 - u.kl_mean;  // gains 0.1, 0.4, 0.2, 0.3
  ro.units[0].kl_mean = 0.6;                             // gain -0.1
  CHECK(ro.cost(0) == 0.0);
  // Every unit measured harmless: the uniform plan still predicts the measured baseline.
  plan::Profile flat = ro;
  for (auto& u : flat.units) u.kl_mean = 0.7;
  plan::Request uniform;
  uniform.strategy = plan::Strategy::UNIFORM;
  CHECK(plan::make_plan({flat}, uniform).planner->predicted_kl.value() == 0.5);
  r.percent = 25;  // u1 restored: 0.5 x (0.2 + 0.3) / 0.9
  CHECK(plan::make_plan({ro}, r).planner->predicted_kl.value() == Approx(0.5 * 0.5 / 0.9));
}

TEST_CASE("planner: --fused-groups decides q/k/v and gate/up of a block together", "[plan]") {
  // One block, 100 parameters per layer at 4 bits (50 bytes) or bf16 (200 bytes).
  plan::Profile p = profile("nf4", 1.0, 0.5);
  p.units.clear();
  const std::vector<std::pair<std::string, double>> layers = {
      {"self_attn.q_proj", 0.5}, {"self_attn.k_proj", 0.01}, {"self_attn.v_proj", 0.01},
      {"self_attn.o_proj", 0.3}, {"mlp.gate_proj", 0.05},    {"mlp.up_proj", 0.05},
      {"mlp.down_proj", 0.2}};
  for (const auto& [name, kl] : layers)
    p.units.push_back({"model.layers.0." + name, 100, 50, 200, kl, 0.001});
  auto formats = [](const kldq::quant::Plan& pl) {
    std::vector<std::string> out;
    for (const auto& [id, f] : *pl.planner->unit_formats) out.push_back(f);
    return out;  // sorted by id: down, gate, up, k, o, q, v
  };
  plan::Request r;
  r.strategy = plan::Strategy::RESTORE_TOP;
  r.percent = 40;
  // Per layer: round(0.4 * 7) = 3 most sensitive (q, o, down): q is split from k and v.
  CHECK(formats(plan::make_plan({p}, r)) ==
        std::vector<std::string>{"bf16", "nf4", "nf4", "nf4", "bf16", "bf16", "nf4"});
  // Fused: four decisions {q,k,v} 0.52, {o} 0.3, {down} 0.2, {gate,up} 0.1; round(0.4 * 4) = 2.
  r.fused_groups = true;
  auto fused = plan::make_plan({p}, r);
  CHECK(formats(fused) ==
        std::vector<std::string>{"nf4", "nf4", "nf4", "bf16", "bf16", "bf16", "bf16"});
  CHECK(fused.planner->predicted_kl.value() == Approx(1.0 * (0.1 + 0.2) / 1.12));
  CHECK(fused.planner->fused_groups == true);
  // Budget of 650 bytes (300 spare): per layer q + o (saves 0.8); fused, {q,k,v} needs 450, so
  // o + down (0.5) beats {gate,up} (0.1).
  r = {};
  r.strategy = plan::Strategy::BUDGET;
  r.budget_bpw = 8.0 * 650 / 700;
  CHECK(formats(plan::make_plan({p}, r)) ==
        std::vector<std::string>{"nf4", "nf4", "nf4", "nf4", "bf16", "bf16", "nf4"});
  r.fused_groups = true;
  CHECK(formats(plan::make_plan({p}, r)) ==
        std::vector<std::string>{"bf16", "nf4", "nf4", "nf4", "bf16", "nf4", "nf4"});
  // Random restoration keeps groups whole too, for every seed.
  r = {};
  r.strategy = plan::Strategy::RANDOM;
  r.percent = 50;
  r.fused_groups = true;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    r.seed = seed;
    const auto f = formats(plan::make_plan({p}, r));
    CHECK(f[3] == f[5]);  // k, q
    CHECK(f[5] == f[6]);  // q, v
    CHECK(f[1] == f[2]);  // gate, up
  }
}
