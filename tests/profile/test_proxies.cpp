// The profile's proxies against independent computations: Spearman against hand-computed ranks
// with ties; the decoder's observer, the output error and the Fisher-weighted error against
// transformers (tests/oracle/proxy_oracle.py: forward hooks for each linear's inputs and outputs,
// torch autograd for the squared gradients); weight MSE/SQNR against formats::weight_error and
// the CPU reference quantizer; on CUDA ([cuda]), gradients against the CPU's (the fused kernels
// must give way to ATen under autograd) and bf16 proxies near fp32 ones; the command's --proxies
// and --csv outputs and errors.
#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "kldq/formats/packed.hpp"
#include "kldq/io/csv.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/profile/proxies.hpp"
#include "kldq/profile/record.hpp"
#include "support/catch.hpp"

namespace profile = kldq::profile;
using kldq::model::LayerId;
using kldq::test::run_kldq;

namespace {

kldq::model::Decoder tiny() {
  return kldq::model::Decoder::load(kldq::test::tiny_model(), c10::Device(c10::kCPU), at::kFloat);
}

// The calibration windows every test here uses: [6, 24], in batches of 4 (the second partial).
at::Tensor windows() {
  at::manual_seed(3);
  return at::randint(512, {6, 24}, at::kLong);
}
constexpr int64_t kBatch = 4;

// transformers' view of the tiny model on windows(), computed once (proxy_oracle.py).
struct Oracle {
  kldq::test::CommandResult run;
  std::shared_ptr<kldq::io::SafetensorsFile> file;
  at::Tensor get(const std::string& name) const { return file->tensor(name).to(at::kDouble); }
};

const Oracle* oracle() {
  static const std::optional<Oracle> o = []() -> std::optional<Oracle> {
    const auto py = kldq::test::python_with("torch transformers safetensors");
    if (!py) return std::nullopt;
    static kldq::test::TempDir dir("proxy-oracle");
    const at::Tensor ids = windows();
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t w = 0; w < ids.size(0); ++w) {
      const at::Tensor row = ids[w].contiguous();
      rows.push_back(
          std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel()));
    }
    kldq::test::write_text(dir / "ids.json", rows.dump());
    Oracle r;
    r.run = kldq::test::run_command(*py + " " KLDQ_SOURCE_DIR "/tests/oracle/proxy_oracle.py " +
                                    kldq::test::tiny_model().string() + " " +
                                    (dir / "ids.json").string() + " " + std::to_string(kBatch) +
                                    " " + (dir / "oracle.safetensors").string());
    if (r.run.rc == 0) r.file = kldq::io::SafetensorsFile::open(dir / "oracle.safetensors");
    return r;
  }();
  return o ? &*o : nullptr;
}

double rel_diff(const at::Tensor& got, const at::Tensor& want) {
  return ((got.to(at::kDouble) - want).abs().max() / want.abs().max()).item<double>();
}

double sq(const at::Tensor& t) {
  return t.square().sum().item<double>();
}

// Naive Spearman for the JSON check: rank = 1 + #smaller + (#equal - 1) / 2, then Pearson.
double naive_spearman(const std::vector<double>& x, const std::vector<double>& y) {
  auto rank = [](const std::vector<double>& v) {
    std::vector<double> r;
    for (double a : v) {
      double less = 0, equal = 0;
      for (double b : v) less += b < a, equal += b == a;
      r.push_back(1 + less + (equal - 1) / 2);
    }
    return r;
  };
  const auto rx = rank(x), ry = rank(y);
  const double n = static_cast<double>(x.size()), m = (n + 1) / 2;
  double c = 0, a = 0, b = 0;
  for (size_t i = 0; i < x.size(); ++i)
    c += (rx[i] - m) * (ry[i] - m), a += (rx[i] - m) * (rx[i] - m), b += (ry[i] - m) * (ry[i] - m);
  return c / std::sqrt(a * b);
}

}  // namespace

TEST_CASE("proxies: Spearman with tied ranks against hand computations", "[profile]") {
  // x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4: cov 4.5, var 4.5 and 5 -> 4.5 / sqrt(22.5).
  CHECK(*profile::spearman({1, 2, 2, 3}, {1, 3, 2, 4}) == Approx(4.5 / std::sqrt(22.5)));
  // Ties in both: x ranks 1, 3, 3, 3, 5; y ranks 2.5, 2.5, 1, 5, 4: cov 3, var 8 and 9.5.
  CHECK(*profile::spearman({10, 20, 20, 20, 50}, {5, 5, 1, 9, 7}) == Approx(3 / std::sqrt(76.0)));
  CHECK(*profile::spearman({1, 2, 3, 4, 5}, {1, 8, 27, 64, 125}) == Approx(1.0));
  CHECK(*profile::spearman({1, 2, 3, 4, 5}, {0.5, 0.4, 0.3, 0.2, -9}) == Approx(-1.0));
  CHECK_FALSE(profile::spearman({1, 2}, {2, 1}));               // fewer than 3
  CHECK_FALSE(profile::spearman({1, 1, 1}, {1, 2, 3}));         // constant
  CHECK_FALSE(profile::spearman({1, NAN, 3}, {1, 2, 3}));       // not finite
  CHECK_FALSE(profile::spearman({1, INFINITY, 3}, {1, 2, 3}));  // not finite
  CHECK_THROWS(profile::spearman({1, 2, 3}, {1, 2}));
}

TEST_CASE("decoder observer: each linear's input, as transformers' hooks see it",
          "[profile][model][oracle]") {
  const Oracle* o = oracle();
  if (!o) KLDQ_SKIP("no Python with torch and transformers");
  INFO(o->run.err);
  REQUIRE(o->run.rc == 0);
  auto m = tiny();
  const at::Tensor ids = windows();
  at::InferenceMode guard;
  // Observed inputs per layer [N*T, in], collected from the fused and then the unfused GEMMs.
  for (const bool fused : {true, false}) {
    if (!fused)  // replacing one member of a group splits it
      for (int b = 0; b < m.num_blocks(); ++b)
        for (auto p : {kldq::model::Proj::Q, kldq::model::Proj::GATE})
          m.set_linear({b, p}, m.linear({b, p}));
    const at::Tensor last = m.forward(ids.narrow(0, kBatch, 2));  // without the observer
    std::map<std::string, std::vector<at::Tensor>> seen;
    std::vector<std::pair<LayerId, at::Tensor>> calls;
    at::Tensor out;
    {
      const kldq::model::Decoder::ScopedObserver observe(
          m, [&](const LayerId& id, const at::Tensor& x) {
            calls.emplace_back(id, x);
            seen[id.name()].push_back(x.reshape({-1, x.size(-1)}).clone());
          });
      for (int64_t w = 0; w < ids.size(0); w += kBatch)
        out = m.forward(ids.narrow(0, w, std::min(kBatch, ids.size(0) - w)));
    }
    CHECK(at::equal(out, last));         // the observer changes nothing
    REQUIRE(calls.size() == 2 * 2 * 7);  // batches x blocks x layers
    for (size_t c = 0; c < 14; ++c) CHECK(calls[c].first == m.linear_ids()[c]);  // model order
    CHECK(calls[0].second.is_same(calls[1].second));  // q, k, v share their input
    CHECK(calls[1].second.is_same(calls[2].second));
    CHECK(calls[4].second.is_same(calls[5].second));  // gate, up
    for (const LayerId& id : m.linear_ids()) {
      const std::string name = id.name();
      INFO(name << (fused ? " fused" : " unfused"));
      const at::Tensor x = at::cat(seen.at(name));
      CHECK(rel_diff(x, o->get(name + ".input")) < 1e-5);
      // x W^T + b from the observed input reproduces what the layer returns in transformers.
      CHECK(rel_diff(m.linear(id).forward(x), o->get(name + ".output")) < 1e-5);
    }
  }
}

TEST_CASE("calibration gradients: squared gradients equal torch autograd's", "[profile][oracle]") {
  const Oracle* o = oracle();
  if (!o) KLDQ_SKIP("no Python with torch and transformers");
  INFO(o->run.err);
  REQUIRE(o->run.rc == 0);
  auto m = tiny();  // fused q/k/v and gate/up: the layers are views into shared buffers
  const at::Tensor ids = windows();
  at::InferenceMode guard;  // as in run_profile; the RoPE table is built under it here
  const at::Tensor before = m.forward(ids);
  std::map<std::string, at::Tensor> fisher;
  int observed = 0;  // the observer sees each batch's forward once
  std::optional<kldq::model::Decoder::ScopedObserver> observe;
  observe.emplace(m, [&](const LayerId&, const at::Tensor&) { ++observed; });
  // chunk 7: several LM head chunks per window of 23 predictions, the last one partial; the
  // windows are an inference tensor here
  const int64_t batches = profile::calibration_gradients(
      m, ids.clone(), kBatch, 7, [&](const LayerId& id, const at::Tensor& g) {
        const at::Tensor g2 = g.to(at::kDouble).square();
        at::Tensor& f = fisher[id.name()];
        f = f.defined() ? f + g2 : g2;
      });
  observe.reset();
  CHECK(batches == 2);
  CHECK(observed == 2 * 14);
  REQUIRE(fisher.size() == 14);
  for (const auto& [name, f] : fisher) {
    INFO(name);
    CHECK(rel_diff(f, o->get(name + ".fisher")) < 1e-4);
  }
  // Weights untouched and layers restored (now unfused: fp32 rounding of other GEMM shapes).
  CHECK(rel_diff(m.forward(ids), before.to(at::kDouble)) < 1e-5);
  CHECK_FALSE(m.linear({0, kldq::model::Proj::Q}).weight().requires_grad());
}

TEST_CASE("proxies: weight, output and Fisher errors against independent computations",
          "[profile][oracle]") {
  const Oracle* o = oracle();
  if (!o) KLDQ_SKIP("no Python with torch and transformers");
  INFO(o->run.err);
  REQUIRE(o->run.rc == 0);
  const auto spec = kldq::formats::FormatSpec::parse("int3_g32");
  for (const auto g : {profile::Granularity::LINEAR, profile::Granularity::HALF_BLOCK}) {
    auto m = tiny();
    profile::Options opt;
    opt.granularity = g;
    opt.base = spec;
    opt.batch = kBatch;
    opt.chunk = 10;
    opt.proxies = true;
    const profile::Result r =
        profile::run_profile(m, windows(), kldq::test::rtn_layers(m, opt.base), opt);
    REQUIRE(r.units.size() == (g == profile::Granularity::LINEAR ? 14u : 4u));
    for (const auto& u : r.units) {
      INFO(u.unit.id);
      REQUIRE(u.proxies);
      // Sums over the unit's layers, each from transformers' weight W, inputs X and Fisher F and
      // the CPU reference quantizer's dW = W - dequantize(quantize_rtn(W)).
      double numel = 0, w2 = 0, dw2 = 0, ref2 = 0, err2 = 0, fisher = 0;
      for (const LayerId& id : u.unit.layers) {
        const std::string name = id.name();
        const at::Tensor w = o->get(name + ".weight");  // [out, in]
        const auto packed = kldq::formats::quantize_rtn(w.to(at::kFloat), spec);
        const at::Tensor dw = w - kldq::formats::dequantize(packed).to(at::kDouble);
        const at::Tensor x = o->get(name + ".input");  // [N*T, in]
        if (u.unit.layers.size() == 1) {
          const auto e = kldq::formats::weight_error(w, packed);
          CHECK(u.proxies->weight_mse == Approx(e.mse).epsilon(1e-6));
          CHECK(u.proxies->weight_sqnr_db == Approx(e.sqnr_db).epsilon(1e-6));
        }
        numel += static_cast<double>(w.numel());
        w2 += sq(w);
        dw2 += sq(dw);
        ref2 += sq(at::matmul(x, w.t()));
        err2 += sq(at::matmul(x, dw.t()));
        fisher += (o->get(name + ".fisher") * dw.square()).sum().item<double>();
      }
      CHECK(u.proxies->weight_mse == Approx(dw2 / numel).epsilon(1e-6));
      CHECK(u.proxies->weight_sqnr_db == Approx(10 * std::log10(w2 / dw2)).epsilon(1e-6));
      CHECK(u.proxies->output_rel_error == Approx(std::sqrt(err2 / ref2)).epsilon(1e-5));
      CHECK(u.proxies->fisher == Approx(fisher).epsilon(1e-4));
      CHECK(u.proxies->fisher > 0);
    }
    // profile.json: the unit keys, and Spearman of each proxy with kl_mean.
    const auto j = profile::to_json(profile::record_of(r, opt, kldq::quant::Method::RTN));
    REQUIRE(j.contains("proxies"));
    CHECK(j["proxies"]["against"] == "kl_mean");
    std::vector<double> kl;
    for (const auto& u : r.units) kl.push_back(u.kl.mean);
    for (const std::string key : {"weight_mse", "weight_sqnr_db", "output_rel_error", "fisher"}) {
      INFO(key);
      std::vector<double> v;
      for (const auto& u : j["units"]) v.push_back(u[key].get<double>());
      CHECK(j["proxies"]["spearman"][key].get<double>() == Approx(naive_spearman(v, kl)));
    }
  }
}

TEST_CASE("proxies: a bf16 base, nulls in JSON, nothing without the option", "[profile]") {
  auto m = tiny();
  profile::Options opt;
  opt.granularity = profile::Granularity::BLOCK;
  opt.base = kldq::formats::FormatSpec::parse("bf16");
  opt.proxies = true;
  at::manual_seed(1);
  const at::Tensor ids = at::randint(512, {3, 8}, at::kLong);
  // The tiny fp32 model's weights are not bf16 values, so bf16 has a small error: finite SQNR.
  auto r = profile::run_profile(m, ids, kldq::test::rtn_layers(m, opt.base), opt);
  REQUIRE(r.units.size() == 2);
  CHECK(std::isfinite(r.units[0].proxies->weight_sqnr_db));
  CHECK(r.units[0].proxies->weight_sqnr_db > 40);
  // Two units: too few for a rank correlation; an infinite SQNR is null in JSON.
  r.units[1].proxies->weight_sqnr_db = INFINITY;
  const auto j = profile::to_json(profile::record_of(r, opt, kldq::quant::Method::RTN));
  CHECK(j["proxies"]["spearman"]["fisher"].is_null());
  CHECK(j["units"][1]["weight_sqnr_db"].is_null());
  opt.proxies = false;
  auto m2 = tiny();
  const auto plain = profile::to_json(
      profile::record_of(profile::run_profile(m2, ids, kldq::test::rtn_layers(m2, opt.base), opt),
                         opt, kldq::quant::Method::RTN));
  CHECK_FALSE(plain.contains("proxies"));
  CHECK_FALSE(plain["units"][0].contains("fisher"));
}

TEST_CASE("proxies on CUDA: gradients equal the CPU's, bf16 proxies near fp32", "[cuda][profile]") {
  KLDQ_SKIP_NO_CUDA();
  // On CUDA the fused RMSNorm, RoPE and SwiGLU kernels have no backward: with autograd
  // recording, the decoder must take their ATen compositions or gradients go missing.
  const at::Tensor ids = windows();
  std::map<std::string, at::Tensor> f[2];
  for (int d = 0; d < 2; ++d) {
    auto m = kldq::model::Decoder::load(
        kldq::test::tiny_model(), d ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU), at::kFloat);
    at::InferenceMode guard;
    m.forward(ids);
    profile::calibration_gradients(m, ids, kBatch, 7, [&](const LayerId& id, const at::Tensor& g) {
      REQUIRE(g.defined());
      const at::Tensor g2 = g.cpu().to(at::kDouble).square();
      at::Tensor& t = f[d][id.name()];
      t = t.defined() ? t + g2 : g2;
    });
  }
  for (const auto& [name, cpu] : f[0]) {
    INFO(name);
    CHECK(rel_diff(f[1].at(name), cpu) < 1e-3);
  }
  // The whole profile with proxies in bf16 on CUDA: int3's error dwarfs bf16 rounding, so the
  // proxies stay near the fp32 CPU values (bf16 on the CPU: within 2 %, 0.01 dB).
  profile::Result r[2];
  for (int d = 0; d < 2; ++d) {
    auto m = kldq::model::Decoder::load(kldq::test::tiny_model(),
                                        d ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU),
                                        d ? at::kBFloat16 : at::kFloat);
    profile::Options opt;
    opt.base = kldq::formats::FormatSpec::parse("int3_g32");
    opt.batch = kBatch;
    opt.proxies = true;
    r[d] = profile::run_profile(m, ids, kldq::test::rtn_layers(m, opt.base), opt);
  }
  for (size_t i = 0; i < r[0].units.size(); ++i) {
    INFO(r[0].units[i].unit.id);
    const auto &a = *r[0].units[i].proxies, &b = *r[1].units[i].proxies;
    CHECK(std::abs(b.weight_sqnr_db - a.weight_sqnr_db) < 0.25);
    CHECK(b.output_rel_error == Approx(a.output_rel_error).epsilon(0.1));
    CHECK(b.fisher == Approx(a.fisher).epsilon(0.15));
  }
}

TEST_CASE("kldq profile --proxies --csv on the trained stories260K model", "[profile][cli]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto calib = kldq::test::shared_data("wikitext-2/valid.tokenized.txt");
  if (!model || !calib) KLDQ_SKIP("../shared/data not present");
  kldq::test::TempDir dir("proxies");
  const std::string common = "profile " + model->string() + " --base nf4 --calib " +
                             calib->string() + " --samples 8 --seq-len 128 --device cpu ";
  const std::vector<std::string> keys = {"weight_mse", "weight_sqnr_db", "output_rel_error",
                                         "fisher"};
  for (const std::string mode : {"quantize-one", "restore-one"}) {
    const auto json = dir / (mode + ".json"), csv = dir / (mode + ".csv");
    const auto r = run_kldq(common + "--proxies --mode " + mode + " --csv " + csv.string() +
                            " -o " + json.string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
    CHECK_THAT(r.err, HasText("Spearman with"));
    const auto j = nlohmann::json::parse(kldq::test::read_text(json));
    REQUIRE(j["units"].size() == 35);
    for (const auto& u : j["units"])
      for (const auto& k : keys) CHECK(u[k].get<double>() > 0);
    CHECK(j["proxies"]["against"] == (mode == "quantize-one" ? "kl_mean" : "kl_gain"));
    for (const auto& k : keys) {
      const double s = j["proxies"]["spearman"][k].get<double>();
      CHECK(s >= -1.0);
      CHECK(s <= 1.0);
    }
    const auto rows = kldq::io::read_csv(csv);
    REQUIRE(rows.size() == 36);  // header + 35 units
    const auto& head = rows[0].fields;
    CHECK(head.front() == "id");
    CHECK(head.size() == j["units"][0].size());
    for (size_t i = 1; i < rows.size(); ++i) {
      REQUIRE(rows[i].fields.size() == head.size());
      const auto& u = j["units"][i - 1];
      for (size_t c = 0; c < head.size(); ++c) {
        INFO(head[c]);
        REQUIRE(u.contains(head[c]));
        if (u[head[c]].is_string())
          CHECK(rows[i].fields[c] == u[head[c]].get<std::string>());
        else  // numbers read back exactly
          CHECK(std::stod(rows[i].fields[c]) == u[head[c]].get<double>());
      }
    }
  }
  {  // without --proxies nothing changes; --csv alone has the plain columns
    const auto r = run_kldq(common + "--granularity block --csv " + (dir / "plain.csv").string() +
                            " -o " + (dir / "plain.json").string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const auto j = nlohmann::json::parse(kldq::test::read_text(dir / "plain.json"));
    CHECK_FALSE(j.contains("proxies"));
    const auto rows = kldq::io::read_csv(dir / "plain.csv");
    REQUIRE(rows.size() == 6);
    CHECK(rows[0].fields == std::vector<std::string>{"id", "params", "bytes_base", "bytes_bf16",
                                                     "kl_mean", "kl_stderr", "top1_agree"});
  }
  const auto bad_json = dir / "bad.json";
  {  // an unwritable --csv fails before the run and leaves no profile.json
    const auto r =
        run_kldq(common + "--proxies --csv /nonexistent-kldq-dir/p.csv -o " + bad_json.string());
    INFO(r.err);
    CHECK(r.rc == 1);
    CHECK_THAT(r.err, HasText("/nonexistent-kldq-dir/p.csv"));
    CHECK_FALSE(kldq::test::fs::exists(bad_json));
  }
  {  // a directory as --csv
    const auto r = run_kldq(common + "--csv " + dir.path().string() + " -o " + bad_json.string());
    CHECK(r.rc == 2);  // a usage error: the option names a directory
    CHECK_THAT(r.err, HasText("is a directory"));
    CHECK_FALSE(kldq::test::fs::exists(bad_json));
  }
  {
    const auto r = run_kldq(common + "--csv " + bad_json.string() + " -o " + bad_json.string());
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText("the same file as -o"));
    CHECK_FALSE(kldq::test::fs::exists(bad_json));
  }
}
