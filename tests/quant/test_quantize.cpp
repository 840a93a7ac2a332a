// Quantized layers and checkpoints: QLinear against a dense GEMM on the reference-dequantized
// weight, in-memory quantization against a decoder holding those dense weights, `kldq quantize`
// round trips (packed tensors identical to quantize_rtn of the source), hand-derived byte
// accounting, plans and selectors, and the errors of bad formats, plans and checkpoints.
#include <ATen/ATen.h>

#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/quant/quantizer.hpp"
#include "support/catch.hpp"

namespace f = kldq::formats;
namespace m = kldq::model;
namespace q = kldq::quant;
using kldq::test::run_kldq;

TEST_CASE("QLinear with a packed weight computes x W^T + b with the dequantized W", "[quant]") {
  at::manual_seed(1);
  const at::Tensor w = at::randn({24, 172});
  const at::Tensor b = at::randn({24});
  const at::Tensor x = at::randn({3, 5, 172});
  for (const char* name : {"nf4", "fp4_b32", "int4_g32_asym", "int3_g64", "int2_g128", "int8",
                           "fp8_e4m3", "fp8_e5m2", "fp8_e4m3_noscale", "bf16", "fp16"}) {
    INFO(name);
    const f::PackedWeight p = f::quantize_rtn(w, f::FormatSpec::parse(name));
    const at::Tensor wd = f::dequantize(p);  // [24, 172] fp32 reference
    const m::QLinear layer(p, b, at::kFloat, std::make_shared<kldq::kernels::Workspace>());
    CHECK(layer.format_name() == f::FormatSpec::parse(name).name());
    CHECK(at::equal(layer.forward(x), at::linear(x, wd, b)));
    m::QLinear scaled(p, at::Tensor(), at::kFloat, nullptr);
    const at::Tensor s = at::rand({172}) + 0.5;
    scaled.set_input_scale(s);
    CHECK(at::equal(scaled.forward(x), at::linear(x / s, wd)));
  }
}

TEST_CASE("quantizing a decoder in memory equals running it on the dequantized weights",
          "[quant]") {
  const auto& tiny = kldq::test::tiny_model();
  auto quantized = m::Decoder::load(tiny, c10::kCPU, c10::kFloat);
  auto dense = m::Decoder::load(tiny, c10::kCPU, c10::kFloat);
  const auto original = m::Decoder::load(tiny, c10::kCPU, c10::kFloat);
  q::Plan plan;
  plan.base = f::FormatSpec::parse("int4_g32");
  plan.overrides.push_back(
      {q::LayerSelector("*.mlp.down_proj", "test"), f::FormatSpec::parse("nf4")});
  const auto formats = plan.resolve(quantized.linear_ids());
  q::apply_layers(quantized, q::quantize_layers(quantized, formats, {}));
  for (const auto& id : dense.linear_ids()) {
    const m::QLinear& l = original.linear(id);
    const at::Tensor wd = f::dequantize(f::quantize_rtn(l.weight(), formats.at(id.name())));
    dense.set_linear(id, m::QLinear(wd, l.has_bias() ? l.bias().clone() : at::Tensor()));
    CHECK(quantized.linear(id).is_packed());
    CHECK(quantized.linear(id).format_name() == (id.proj == m::Proj::DOWN ? "nf4" : "int4_g32"));
  }
  at::manual_seed(2);
  const at::Tensor ids = at::randint(512, {2, 40}, at::kLong);
  const at::Tensor lq = quantized.forward(ids);
  CHECK(at::equal(lq, dense.forward(ids)));
  CHECK_FALSE(at::allclose(lq, original.forward(ids)));  // quantization changed something
  uint64_t qbytes = 0, obytes = 0;
  for (const auto& id : original.linear_ids()) {
    qbytes += quantized.linear(id).bytes();
    obytes += original.linear(id).bytes();
  }
  CHECK(qbytes < obytes / 5);  // ~4.5-bit codes and fp32 biases against fp32 weights
}

TEST_CASE("kldq quantize writes a checkpoint that loads back bit for bit", "[quant][cli]") {
  kldq::test::TempDir dir("quant");
  const auto& tiny = kldq::test::tiny_model();
  const auto out = dir / "q";
  const auto r = run_kldq("quantize " + tiny.string() +
                          " --base int3_g64_asym --keep 'model.layers.0.mlp.*' --keep "
                          "'re:.*\\.1\\.self_attn\\.[qk]_proj' --keep 'nothing.*' -o " +
                          out.string());
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.err, HasText("layer pattern 'nothing.*' matches no layer"));
  CHECK(kldq::test::fs::exists(out / "config.json"));
  const auto plan = nlohmann::json::parse(kldq::test::read_text(out / "quantization.json"));
  CHECK(plan["base"] == "int3_g64_asym");
  CHECK(plan["method"] == "rtn");
  CHECK(plan["layers"]["model.layers.0.mlp.up_proj"] == "bf16");
  CHECK(plan["layers"]["model.layers.1.self_attn.k_proj"] == "bf16");
  CHECK(plan["layers"]["model.layers.1.self_attn.v_proj"] == "int3_g64_asym");

  const auto src = m::Decoder::load(tiny, c10::kCPU, c10::kFloat);
  const auto back = m::Decoder::load(out, c10::kCPU, c10::kFloat);
  for (const auto& id : src.linear_ids()) {
    INFO(id.name());
    const std::string fmt = plan["layers"][id.name()];
    const f::PackedWeight want =
        f::quantize_rtn(src.linear(id).weight(), f::FormatSpec::parse(fmt));
    const m::QLinear& got = back.linear(id);
    CHECK(got.format_name() == fmt);
    if (fmt == "bf16") {
      CHECK(at::equal(got.weight(), want.codes.to(at::kFloat)));
      continue;
    }
    const auto wp = want.parts(), gp = got.packed().parts();
    REQUIRE(wp.size() == gp.size());
    for (size_t i = 0; i < wp.size(); ++i) CHECK(at::equal(wp[i], gp[i]));
    CHECK(at::equal(got.effective_weight(at::kFloat), f::dequantize(want)));
  }
  // The tied head and the norms are copied unchanged.
  at::manual_seed(3);
  const at::Tensor ids = at::randint(512, {1, 16}, at::kLong);
  CHECK(back.forward(ids).sizes() == src.forward(ids).sizes());
}

TEST_CASE("quantized byte accounting is exact and inspect agrees with the files", "[quant][cli]") {
  kldq::test::TempDir dir("quant-bytes");
  const auto out = dir / "q";
  REQUIRE(
      run_kldq("quantize " + kldq::test::tiny_model().string() + " --base nf4 -o " + out.string())
          .rc == 0);
  const auto r = run_kldq("inspect --json " + out.string());
  REQUIRE(r.rc == 0);
  const auto j = nlohmann::json::parse(r.out);
  // Hand-derived: n/2 code bytes + 4 bytes of absmax per block of 64, for each layer's n.
  auto nf4 = [](int64_t n) { return n / 2 + 4 * ((n + 63) / 64); };
  const int64_t per_block = nf4(64 * 64) * 2 + nf4(32 * 64) * 2 + nf4(172 * 64) * 3;
  int64_t weights = 0;
  for (const auto& l : j["linear_layers"]) {
    CHECK(l["format"] == "nf4");
    weights += l["weight_bytes"].get<int64_t>();
  }
  CHECK(weights == 2 * per_block);
  const int64_t biases = 2 * (64 + 32 + 32) * 4;  // fp32 source
  CHECK(j["linear_bytes"].get<int64_t>() == weights + biases);
  const auto file = kldq::io::SafetensorsFile::open(out / "model.safetensors");
  CHECK(j["file_bytes"].get<uint64_t>() == file->file_bytes());
  CHECK(j["tensor_bytes"].get<uint64_t>() + file->header_bytes() == file->file_bytes());
  CHECK(j["linear_bits_per_weight"].get<double>() ==
        Approx(8.0 * weights / (2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64))));
}

TEST_CASE("layer selectors and plans", "[quant]") {
  const q::LayerSelector glob("model.layers.*.mlp.*_proj", "t");
  CHECK(glob.matches("model.layers.12.mlp.down_proj"));
  CHECK_FALSE(glob.matches("model.layers.12.self_attn.q_proj"));
  CHECK(q::LayerSelector("model.layers.?.self_attn.q_proj", "t")
            .matches("model.layers.3.self_attn.q_proj"));
  CHECK_FALSE(q::LayerSelector("model.layers.?.self_attn.q_proj", "t")
                  .matches("model.layers.13.self_attn.q_proj"));
  CHECK(q::LayerSelector("re:model\\.layers\\.(0|1)\\..*", "t")
            .matches("model.layers.1.mlp.up_proj"));
  CHECK_FALSE(
      q::LayerSelector("re:layers", "t").matches("model.layers.1.mlp.up_proj"));  // whole id
  CHECK_THROWS_WITH(q::LayerSelector("re:(", "--keep"), HasText("--keep: invalid regex"));
  // ECMAScript spellings of earlier plans: \d, \w (also inside classes), \D, ^ and $.
  const q::LayerSelector ecma("re:^model\\.layers\\.\\d+\\.mlp\\.[\\w]+_proj$", "t");
  CHECK(ecma.matches("model.layers.12.mlp.up_proj"));
  CHECK_FALSE(ecma.matches("model.layers.x.mlp.up_proj"));
  CHECK_FALSE(ecma.matches("model.layers.1.mlp.up-proj"));
  CHECK(q::LayerSelector("re:model\\.layers\\.\\D.*", "t").matches("model.layers.x"));
  CHECK_FALSE(q::LayerSelector("re:model\\.layers\\.\\D.*", "t").matches("model.layers.1"));

  const auto plan = q::Plan::from_json(
      nlohmann::json::parse(R"({"base": "nf4", "overrides": [{"layers": "*.mlp.*", "format":
      "int8"}, {"layers": "*.down_proj", "format": "bf16"}]})"),
      "plan.json");
  const auto resolved = plan.resolve({{0, m::Proj::Q}, {0, m::Proj::UP}, {0, m::Proj::DOWN}});
  CHECK(resolved.at("model.layers.0.self_attn.q_proj").name() == "nf4");
  CHECK(resolved.at("model.layers.0.mlp.up_proj").name() == "int8");
  CHECK(resolved.at("model.layers.0.mlp.down_proj").name() == "bf16");  // last match wins
  CHECK(q::Plan::from_json(plan.to_json(), "again").to_json() == plan.to_json());
  CHECK_THROWS_WITH(
      q::Plan::from_json(nlohmann::json::parse(R"({"base": "nf4", "overides": []})"), "p.json"),
      HasText("p.json: overides: unknown key"));
  CHECK_THROWS_WITH(q::Plan::from_json(
                        nlohmann::json::parse(
                            R"({"base": "nf4", "overrides": [{"layers": "x", "format": "int5"}]})"),
                        "p.json"),
                    HasText("p.json: overrides[0].format") && HasText("int5"));

  // Recorded method settings: read back as written by method_json, checked key by key.
  q::MethodOptions gptq;
  gptq.method = kldq::quant::Method::GPTQ;
  gptq.gptq.damp = 0.05;
  gptq.gptq.act_order = false;
  const kldq::calib::CalibrationIdentity identity{"calib.txt", "ab", 8, 128, 3, 9000};
  const q::RecordedMethod back = q::method_from_json(q::method_json(gptq, identity), "s");
  CHECK(back.options.method == kldq::quant::Method::GPTQ);
  CHECK(back.options.gptq.damp == 0.05);
  CHECK_FALSE(back.options.gptq.act_order);
  CHECK(back.options.gptq.block == 128);
  REQUIRE(back.calibration);
  CHECK(back.calibration->file == "calib.txt");
  CHECK(back.calibration->samples == 8);
  CHECK(back.calibration->seq_len == 128);
  CHECK(back.calibration->seed == 3);
  CHECK(back.calibration == identity);
  CHECK_FALSE(q::method_from_json({{"method", "rtn"}}, "s").calibration);
  auto with = [&](const char* key, nlohmann::json value) {
    nlohmann::json j = q::method_json(gptq, identity);
    j["gptq"][key] = std::move(value);
    return j;
  };
  const nlohmann::json big_damp = with("damp", "big");
  CHECK_THROWS_WITH(q::method_from_json(kldq::io::Doc(big_damp, "p.json", kldq::io::DocKind::CONFIG,
                                                      "method_settings")),
                    HasText("p.json: method_settings.gptq.damp: expected a number"));
  CHECK_THROWS_WITH(q::method_from_json(with("damp", -1), "s"), HasText("s: gptq.damp"));
  CHECK_THROWS_WITH(q::method_from_json(with("block", 0), "s"), HasText("s: gptq.block"));
  CHECK_THROWS_WITH(q::method_from_json(with("act_order", 1), "s"),
                    HasText("s: gptq.act_order: expected true or false"));
  CHECK_THROWS_WITH(q::method_from_json(with("dampen", 0.1), "s"),
                    HasText("s: gptq.dampen: unknown key"));
  CHECK_THROWS_WITH(q::method_from_json({{"method", "awq"}, {"gptq", {}}}, "s"),
                    HasText("s: gptq: settings of gptq, but the method is awq"));
  nlohmann::json no_seed = q::method_json(gptq, identity);
  no_seed["calibration"].erase("seed");
  CHECK_THROWS_WITH(q::method_from_json(no_seed, "s"), HasText("s: calibration.seed: missing"));
  // In a plan: carried through to_json, and it must be the plan's method.
  nlohmann::json pj = {{"method", "gptq"}, {"base", "int4_g128"}};
  pj["method_settings"] = q::method_json(gptq, identity);
  const q::Plan recorded = q::Plan::from_json(pj, "plan.json");
  CHECK(recorded.to_json()["method_settings"] == pj["method_settings"]);
  pj["method"] = "awq";
  CHECK_THROWS_WITH(
      q::Plan::from_json(pj, "plan.json"),
      HasText("plan.json: method_settings.method: gptq, but the plan's method is awq"));
}

TEST_CASE("kldq quantize rejects bad formats and methods and leaves no output", "[quant][errors]") {
  kldq::test::TempDir dir("quant-err");
  const std::string tiny = kldq::test::tiny_model().string(), out = (dir / "q").string();
  const auto fmt = run_kldq("quantize " + tiny + " --base nf5 -o " + out);
  CHECK(fmt.rc == 2);
  CHECK_THAT(fmt.err, HasText("--base: unknown format 'nf5'"));
  const auto group = run_kldq("quantize " + tiny + " --base int4_g100 -o " + out);
  CHECK(group.rc == 2);
  CHECK_THAT(group.err, HasText("group size must be 32, 64 or 128"));
  const auto method = run_kldq("quantize " + tiny + " --base int4 --method gptq -o " + out);
  CHECK(method.rc == 2);
  CHECK_THAT(method.err, HasText("--method gptq: needs calibration text (--calib FILE)"));
  const auto unknown = run_kldq("quantize " + tiny + " --base int4 --method hq -o " + out);
  CHECK(unknown.rc == 2);
  CHECK_THAT(unknown.err, HasText("--method: unknown method 'hq' (one of: rtn, hqq, gptq, awq)"));
  const auto hqq = run_kldq("quantize " + tiny + " --base int4 --method hqq -o " + out);
  CHECK(hqq.rc == 2);
  CHECK_THAT(hqq.err, HasText("--method hqq fits float zero points") && HasText("int4_g128_fz"));
  const auto fz = run_kldq("quantize " + tiny + " --base int4_g64_fz -o " + out);
  CHECK(fz.rc == 2);
  CHECK_THAT(fz.err, HasText("format int4_g64_fz holds HQQ's fitted zero points"));
  const auto none = run_kldq("quantize " + tiny + " -o " + out);
  CHECK(none.rc == 2);
  CHECK_FALSE(kldq::test::fs::exists(out));
  CHECK(std::distance(kldq::test::fs::directory_iterator(dir.path()),
                      kldq::test::fs::directory_iterator()) == 0);  // no temporaries either
}

namespace {

// Rewrites the quantized checkpoint's safetensors with `metadata` and the tensors of `tensors`.
void rewrite(const kldq::test::fs::path& dir, const std::map<std::string, std::string>& metadata,
             const std::function<at::Tensor(const std::string&, at::Tensor)>& edit = {}) {
  const auto file = kldq::io::SafetensorsFile::open(dir / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& info : file->tensors()) {
    at::Tensor t = file->tensor(info.name).clone();
    tensors.push_back({info.name, edit ? edit(info.name, t) : t});
  }
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const auto& p) { return !p.second.defined(); }),
                tensors.end());
  kldq::io::write_safetensors(dir / "model.safetensors", tensors, metadata);
}

// The IoError that loading the checkpoint `dir` raises, or "loaded".
std::string load_message(const kldq::test::fs::path& dir) {
  try {
    m::Decoder::load(dir, c10::kCPU, c10::kFloat);
  } catch (const kldq::IoError& e) {
    return e.what();
  }
  return "loaded";
}

}  // namespace

TEST_CASE("quantized checkpoints with missing or contradicting metadata are refused",
          "[quant][errors]") {
  kldq::test::TempDir dir("quant-bad");
  const auto out = dir / "q";
  REQUIRE(
      run_kldq("quantize " + kldq::test::tiny_model().string() + " --base nf4 -o " + out.string())
          .rc == 0);
  const auto file = kldq::io::SafetensorsFile::open(out / "model.safetensors");
  const auto metadata = file->metadata();
  auto load_error = [&] { return load_message(out); };
  SECTION("metadata missing") {
    rewrite(out, {{"format", "pt"}});
    CHECK_THAT(load_error(), HasText("no safetensors header carries the 'kldq.formats'"));
    const auto r = run_kldq("inspect " + out.string());
    CHECK(r.rc == 1);
    CHECK_THAT(r.err, HasText("weight_packed"));
  }
  // The header metadata with one layer's format entry set to `format`.
  auto with_format = [&](const std::string& layer, const std::string& format) {
    auto md = metadata;
    auto j = nlohmann::json::parse(md["kldq.formats"]);
    j[layer] = format;
    md["kldq.formats"] = j.dump();
    return md;
  };
  SECTION("metadata names another format than the tensors hold") {
    rewrite(out, with_format("model.layers.1.mlp.up_proj", "int4_g128"));
    kldq::remove_tree(out / "quantization.json");  // else that mismatch is reported first
    CHECK_THAT(load_error(), HasText("model.layers.1.mlp.up_proj.weight_packed") &&
                                 HasText("the layer's format"));
  }
  SECTION("metadata names a layer the model does not have") {
    rewrite(out, with_format("model.layers.7.mlp.up_proj", "nf4"));
    CHECK_THAT(load_error(), HasText("model.layers.7.mlp.up_proj") && HasText("2 blocks"));
  }
  SECTION("a scale tensor with the wrong dtype") {
    rewrite(out, metadata, [](const std::string& name, at::Tensor t) {
      return name == "model.layers.0.self_attn.q_proj.weight_scale" ? t.to(at::kHalf) : t;
    });
    CHECK_THAT(load_error(), HasText("q_proj.weight_scale' has dtype F16, expected F32"));
  }
  SECTION("quantization.json disagrees with the header") {
    auto plan = nlohmann::json::parse(kldq::test::read_text(out / "quantization.json"));
    plan["layers"]["model.layers.0.mlp.down_proj"] = "int8";
    kldq::test::write_text(out / "quantization.json", plan.dump());
    CHECK_THAT(load_error(),
               HasText("quantization.json") && HasText("model.layers.0.mlp.down_proj' is nf4"));
  }
}

TEST_CASE("quantized checkpoints whose tensors contradict their metadata are refused",
          "[quant][errors]") {
  kldq::test::TempDir dir("quant-bad-values");
  const auto out = dir / "q";
  const std::string dense = "model.layers.0.self_attn.q_proj", layer = "model.layers.1.mlp.up_proj";
  REQUIRE(run_kldq("quantize " + kldq::test::tiny_model().string() +
                   " --base int4_g32_asym --keep " + dense + " -o " + out.string())
              .rc == 0);
  const auto metadata = kldq::io::SafetensorsFile::open(out / "model.safetensors")->metadata();
  auto load_error = [&] { return load_message(out); };
  REQUIRE(load_error() == "loaded");
  // The header metadata and quantization.json with one layer's entry set to `format` ("": none).
  auto set_format = [&](const std::string& name, const std::string& format) {
    auto md = metadata;
    auto j = nlohmann::json::parse(md["kldq.formats"]);
    auto plan = nlohmann::json::parse(kldq::test::read_text(out / "quantization.json"));
    if (format.empty()) {
      j.erase(name);
      plan["layers"].erase(name);
    } else {
      j[name] = format;
      plan["layers"][name] = format;
    }
    md["kldq.formats"] = j.dump();
    kldq::test::write_text(out / "quantization.json", plan.dump());
    return md;
  };
  // A stored tensor edited in place, metadata unchanged.
  auto edit = [&](const std::string& name, const std::function<at::Tensor(at::Tensor)>& f) {
    rewrite(out, metadata,
            [&](const std::string& n, at::Tensor t) { return n == name ? f(t) : t; });
  };
  SECTION("a zero point beyond the 4-bit code range") {
    edit(layer + ".weight_zero", [](at::Tensor t) { return t.index_put_({0, 0}, 16); });
    CHECK_THAT(load_error(), HasText(layer) && HasText("zero point 16 outside the 4-bit code "
                                                       "range [0, 15]"));
  }
  SECTION("a negative scale") {
    edit(layer + ".weight_scale", [](at::Tensor t) { return t.neg(); });
    CHECK_THAT(load_error(), HasText(layer) && HasText("negative scale(s)"));
  }
  SECTION("a symmetric format over asymmetric tensors: the zero points are left over") {
    rewrite(out, set_format(layer, "int4_g32"));
    CHECK_THAT(load_error(), HasText("not used") && HasText(layer + ".weight_zero"));
  }
  SECTION("a dense layer listed as packed") {
    rewrite(out, set_format(dense, "int4_g32_asym"));
    CHECK_THAT(load_error(), HasText("missing tensor '" + dense + ".weight_packed'"));
  }
  SECTION("a packed layer missing from the metadata") {
    rewrite(out, set_format(layer, ""));
    CHECK_THAT(load_error(), HasText("missing tensor '" + layer + ".weight'"));
  }
  SECTION("quantization.json without a packed layer") {
    auto plan = nlohmann::json::parse(kldq::test::read_text(out / "quantization.json"));
    plan["layers"].erase(layer);
    kldq::test::write_text(out / "quantization.json", plan.dump());
    CHECK_THAT(load_error(), HasText("quantization.json") && HasText(layer) && HasText("absent"));
  }
  SECTION("a group size the stored scales do not have") {
    rewrite(out, set_format(layer, "int4_g64_asym"));
    CHECK_THAT(load_error(), HasText(layer + ".weight_scale' has shape"));
  }
}

TEST_CASE("the methods table: names, parsing, traits and JSON", "[quant]") {
  using kldq::quant::Method;
  const std::vector<std::pair<Method, std::string>> names = {
      {Method::RTN, "rtn"}, {Method::HQQ, "hqq"}, {Method::GPTQ, "gptq"}, {Method::AWQ, "awq"}};
  for (const auto& [m, name] : names) {
    CHECK(kldq::quant::method_name(m) == name);
    CHECK(kldq::quant::parse_method(name, "--method") == m);
    // JSON holds the name, never the enum's value (stage keys, plans and records depend on it).
    CHECK(nlohmann::json(m) == name);
    CHECK(nlohmann::json({{"method", m}}).dump() == "{\"method\":\"" + name + "\"}");
  }
  CHECK(kldq::quant::needs_calibration(Method::GPTQ));
  CHECK(kldq::quant::needs_calibration(Method::AWQ));
  CHECK_FALSE(kldq::quant::needs_calibration(Method::RTN));
  CHECK_FALSE(kldq::quant::needs_calibration(Method::HQQ));
  CHECK(kldq::quant::method_traits(Method::HQQ).float_zeros);
  CHECK(kldq::quant::method_names() == "rtn, hqq, gptq, awq");
  CHECK_THROWS_WITH(kldq::quant::parse_method("GPTQ", "--method"),
                    "--method: unknown method 'GPTQ' (one of: rtn, hqq, gptq, awq)");
}
