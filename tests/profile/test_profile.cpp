// Sensitivity profiling: the cached path equals the naive full forward per unit (fp32, CPU),
// states that two modes reach by different routes give the same KL, units per granularity,
// seeded calibration windows, and the command's outputs and errors.
#include <ATen/ATen.h>

#include "kldq/calib/calibration.hpp"
#include "kldq/profile/profile.hpp"
#include "support/catch.hpp"

namespace profile = kldq::profile;
using kldq::test::run_kldq;

namespace {

kldq::model::Decoder tiny() {
  return kldq::model::Decoder::load(kldq::test::tiny_model(), c10::Device(c10::kCPU), at::kFloat);
}

profile::Result run(profile::Mode mode, profile::Granularity g, bool cached) {
  auto m = tiny();
  at::manual_seed(3);
  const at::Tensor ids = at::randint(m.config().vocab_size, {6, 24}, at::kLong);
  profile::Options o;
  o.mode = mode;
  o.granularity = g;
  o.base = kldq::formats::FormatSpec::parse("int3_g32");
  o.batch = 4;  // two batches, the second partial
  o.chunk = 50;
  o.cached = cached;
  return profile::run_profile(m, ids, kldq::test::rtn_layers(m, o.base), o);
}

}  // namespace

TEST_CASE("profile: cached path equals a full forward per unit", "[profile]") {
  for (const auto mode : {profile::Mode::QUANTIZE_ONE, profile::Mode::RESTORE_ONE}) {
    const auto a = run(mode, profile::Granularity::LINEAR, true);
    const auto b = run(mode, profile::Granularity::LINEAR, false);
    REQUIRE(a.units.size() == 14);  // 2 blocks x 7 projections
    REQUIRE(b.units.size() == 14);
    CHECK(a.baseline.mean == Approx(b.baseline.mean).epsilon(1e-5));
    for (size_t i = 0; i < a.units.size(); ++i) {
      INFO(profile::mode_name(mode) << " " << a.units[i].unit.id);
      CHECK(a.units[i].unit.id == b.units[i].unit.id);
      CHECK(a.units[i].kl.mean == Approx(b.units[i].kl.mean).epsilon(1e-5));
      CHECK(a.units[i].kl.top1 == b.units[i].kl.top1);
      CHECK(a.units[i].kl.mean >= 0);
      CHECK(a.units[i].kl.mean > 0);  // int3 on random weights always moves the output
    }
  }
  const auto q = run(profile::Mode::QUANTIZE_ONE, profile::Granularity::LINEAR, true);
  CHECK(q.units[0].unit.id == "model.layers.0.self_attn.q_proj");
  CHECK(q.units[13].unit.id == "model.layers.1.mlp.down_proj");
  CHECK(q.units[0].params == 64 * 64);
  // int3_g32: 3 bits per weight + one fp16 scale per 32 weights.
  CHECK(q.units[0].bytes_base == 64 * 64 * 3 / 8 + 2 * 64 * 64 / 32);
}

TEST_CASE("profile: baseline KL equals packed layers' full forward, in float64", "[profile]") {
  // Independent of the profile's in-place states and caches: the model quantized by
  // quantize_decoder (packed layers, dequantized per forward) against the dense one.
  const auto r = run(profile::Mode::QUANTIZE_ONE, profile::Granularity::LINEAR, true);
  auto dense = tiny(), packed = tiny();
  kldq::model::LayerFormats formats;
  for (const auto& id : packed.linear_ids())
    formats.emplace(id.name(), kldq::formats::FormatSpec::parse("int3_g32"));
  kldq::quant::apply_layers(packed, kldq::quant::quantize_layers(packed, formats, {}));
  at::manual_seed(3);  // the windows of run()
  const at::Tensor ids = at::randint(dense.config().vocab_size, {6, 24}, at::kLong);
  at::InferenceMode guard;
  const int64_t T = ids.size(1);
  const at::Tensor lp = dense.forward(ids).narrow(1, 0, T - 1).to(at::kDouble).log_softmax(-1);
  const at::Tensor lq = packed.forward(ids).narrow(1, 0, T - 1).to(at::kDouble).log_softmax(-1);
  const double kl = (lp.exp() * (lp - lq)).sum(-1).mean().item<double>();
  // The profile multiplies by the same dequantized weights inside the fused q/k/v and gate/up
  // GEMMs; the packed layers run one GEMM each. That regrouping rounds the fp32 logits
  // differently (about 1e-6), which moves a KL of 6e-4 by about |q - p| x 1e-6 = 3e-8 per token:
  // 5e-5 relative. A wrong state (a layer left dense, a block quantized twice) moves it by far
  // more.
  CHECK(r.baseline.mean == Approx(kl).epsilon(2e-4));
}

TEST_CASE("profile: restore-one of block 0 equals quantize-one of block 1", "[profile]") {
  // In a 2-block model both leave exactly block 1 quantized, through different cached inputs.
  const auto r = run(profile::Mode::RESTORE_ONE, profile::Granularity::BLOCK, true);
  const auto q = run(profile::Mode::QUANTIZE_ONE, profile::Granularity::BLOCK, true);
  REQUIRE(r.units.size() == 2);
  CHECK(r.units[0].unit.id == "model.layers.0");
  CHECK(r.units[0].kl.mean == Approx(q.units[1].kl.mean).epsilon(1e-5));
  CHECK(r.units[1].kl.mean == Approx(q.units[0].kl.mean).epsilon(1e-5));
  CHECK(r.baseline.mean == Approx(q.baseline.mean).epsilon(1e-5));
  const auto h = run(profile::Mode::QUANTIZE_ONE, profile::Granularity::HALF_BLOCK, true);
  REQUIRE(h.units.size() == 4);
  CHECK(h.units[1].unit.id == "model.layers.0.mlp");
  CHECK(h.units[1].unit.layers.size() == 3);
}

TEST_CASE("calibration windows: seeded, non-overlapping slices, errors with counts", "[profile]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto calib = kldq::test::shared_data("wikitext-2/valid.tokenized.txt");
  if (!model || !calib) KLDQ_SKIP("../shared/data not present");
  const auto tok = kldq::io::Tokenizer::load(*model);
  const auto a = kldq::calib::make_calibration({*calib, 8, 64, 1}, *tok);
  const auto b = kldq::calib::make_calibration({*calib, 8, 64, 1}, *tok);
  const auto c = kldq::calib::make_calibration({*calib, 8, 64, 2}, *tok);
  CHECK(at::equal(a.ids, b.ids));
  CHECK_FALSE(at::equal(a.ids, c.ids));
  const std::vector<int32_t> all = tok->encode(kldq::test::read_text(*calib), false);
  for (int64_t w = 0; w < 8; ++w) {  // each window is the slice at some multiple of T
    bool found = false;
    for (size_t s = 0; s + 64 <= all.size() && !found; s += 64) {
      bool same = true;
      for (int64_t t = 0; t < 64 && same; ++t) same = all[s + t] == a.ids[w][t].item<int64_t>();
      found = same;
    }
    CHECK(found);
  }
  CHECK(a.identity.file_tokens == int64_t(all.size()));
  CHECK_THROWS_WITH(
      kldq::calib::make_calibration({*calib, 100000, 512, 0}, *tok),
      HasText(std::to_string(all.size()) + " tokens; 100000 samples x 512 tokens need 51200000"));
}

TEST_CASE("kldq profile on the trained stories260K model, both modes", "[profile][cli]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto calib = kldq::test::shared_data("wikitext-2/valid.tokenized.txt");
  if (!model || !calib) KLDQ_SKIP("../shared/data not present");
  kldq::test::TempDir dir("profile");
  for (const std::string mode : {"quantize-one", "restore-one"}) {
    const std::string out = (dir / (mode + ".json")).string();
    const auto r =
        run_kldq("profile " + model->string() + " --base nf4 --calib " + calib->string() +
                 " --samples 8 --seq-len 128 --mode " + mode + " --device cpu -o " + out);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const auto j = nlohmann::json::parse(kldq::test::read_text(out));
    REQUIRE(j["units"].size() == 35);  // 5 blocks x 7
    CHECK(j["baseline_kl"].get<double>() > 0);
    CHECK(j["calibration"]["samples"] == 8);
    CHECK(j["calibration"]["sha256"].get<std::string>().size() == 64);
    for (const auto& u : j["units"]) CHECK(u["kl_mean"].get<double>() >= 0);
    if (mode == "restore-one")
      for (const auto& u : j["units"]) CHECK(u.contains("kl_gain"));
  }
  auto fails = [&](const std::string& args, const std::string& text) {
    const auto r = run_kldq("profile " + model->string() + " --calib " + calib->string() + " " +
                            args + " --device cpu -o " + (dir / "bad.json").string());
    INFO(args << "\n" << r.err);
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText(text));
    CHECK_FALSE(kldq::test::fs::exists(dir / "bad.json"));
  };
  fails("--base nf5", "nf5");
  fails("--base nf4 --mode restore-all",
        "--mode: unknown mode 'restore-all' (one of: quantize-one, restore-one)");
  fails("--base nf4 --granularity layer", "--granularity: unknown granularity 'layer'");
  fails("--base nf4 --samples 100000", "100000 samples x 512 tokens need 51200000");
}
