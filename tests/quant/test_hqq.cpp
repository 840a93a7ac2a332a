// HQQ against the reference package (tests/oracle/hqq_oracle.py: hqq's Quantizer.quantize on the
// CPU) on real and hand-shaped weights: the same codes, and scales and zero points equal to the
// reference's fp32 values rounded to the stored fp16; plus the fz format's byte accounting
// (hand-derived), the optimisation never raising the error of its min/max start (also with a
// partial last group), and the method's format checks.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "kldq/core/error.hpp"
#include "kldq/formats/packed.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/quant/hqq.hpp"
#include "kldq/quant/quantizer.hpp"
#include "support/catch.hpp"

namespace f = kldq::formats;
using kldq::quant::HqqOptions;
using kldq::quant::quantize_hqq;

TEST_CASE("HQQ matches the hqq package's codes, scales and zero points", "[quant][hqq]") {
  const auto py = kldq::test::python_with("hqq safetensors");
  if (!py) KLDQ_SKIP("no Python with hqq");
  kldq::test::TempDir dir("hqq");
  const auto r = kldq::test::run_command(
      *py + " " KLDQ_SOURCE_DIR "/tests/oracle/hqq_oracle.py " + (dir / "hqq.st").string() + " " +
      KLDQ_SOURCE_DIR "/models/wikitext-qwen2-4m/model.safetensors");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const auto ref = kldq::io::SafetensorsFile::open(dir / "hqq.st");
  int cases = 0;
  for (int k = 0; ref->find("w_" + std::to_string(k)); ++k, ++cases) {
    const std::string s = std::to_string(k);
    const at::Tensor meta = ref->tensor("meta_" + s);
    const int bits = static_cast<int>(meta[0].item<int64_t>());
    const auto spec =
        f::FormatSpec::parse(fmt::format("int{}_g{}_fz", bits, meta[1].item<int64_t>()));
    HqqOptions o;
    o.round_zero = meta[2].item<int64_t>() != 0;
    const at::Tensor w = ref->tensor("w_" + s);
    const f::PackedWeight p = quantize_hqq(w, spec, o);
    INFO("case " << k << " " << spec.name() << " round_zero " << *o.round_zero);
    const at::Tensor codes = f::unpack_bits(p.codes, bits, p.in);
    CHECK(at::equal(codes, ref->tensor("codes_" + s)));
    CHECK(at::equal(p.scales, ref->tensor("scale_" + s).to(at::kHalf)));
    CHECK(at::equal(p.zeros, ref->tensor("zero_" + s).to(at::kHalf)));
    // The stored weight dequantizes as (code - zero) * scale with the stored fp16 values.
    const at::Tensor expect =
        (codes.to(at::kFloat) - p.zeros.to(at::kFloat).repeat_interleave(spec.group, 1)) *
        p.scales.to(at::kFloat).repeat_interleave(spec.group, 1);
    CHECK(at::equal(f::dequantize(p), expect));
  }
  CHECK(cases == 7);
}

TEST_CASE("HQQ's fz format: bytes, error no worse than its start, partial groups", "[quant][hqq]") {
  // int4 g64 fz of [8, 128]: 8 x 64 code bytes + 16 groups x (2 scale + 2 zero) bytes.
  CHECK(f::FormatSpec::parse("int4_g64_fz").bytes(8, 128) == 8 * 64 + 16 * 4);
  CHECK(f::FormatSpec::parse("int3_g32_fz").bytes(4, 96) == 4 * 36 + 12 * 4);
  CHECK(f::FormatSpec::parse("int2_g128_fz").name() == "int2_g128_fz");
  const at::Tensor w = at::randn({64, 200}, at::TensorOptions().dtype(at::kFloat)) * 0.02;
  for (const char* name : {"int4_g64_fz", "int3_g32_fz", "int2_g32_fz"}) {
    INFO(name);
    const auto spec = f::FormatSpec::parse(name);
    HqqOptions start;
    start.iters = 0;  // min/max initialisation only
    const f::PackedWeight fitted = quantize_hqq(w, spec, {}), init = quantize_hqq(w, spec, start);
    CHECK(fitted.bytes() == spec.bytes(64, 200));  // 200 columns: a partial last group
    const double e_fit = (f::dequantize(fitted) - w).abs().mean().item<double>();
    const double e_init = (f::dequantize(init) - w).abs().mean().item<double>();
    CHECK(e_fit <= e_init * 1.001);  // fp16 storage of z may cost a hair of the fitted gain
  }
}

TEST_CASE("hqq and the fz formats go together", "[quant][hqq][errors]") {
  using kldq::quant::check_formats;
  const auto L = [](const char* fmt) {
    return kldq::model::LayerFormats{{"model.layers.0.mlp.up_proj", f::FormatSpec::parse(fmt)}};
  };
  CHECK_NOTHROW(check_formats(kldq::quant::Method::HQQ, L("int4_g64_fz")));
  CHECK_NOTHROW(check_formats(kldq::quant::Method::HQQ, L("bf16")));
  CHECK_THROWS_WITH(check_formats(kldq::quant::Method::HQQ, L("int3_g128_asym")),
                    HasText("model.layers.0.mlp.up_proj") && HasText("use int3_g128_fz"));
  CHECK_THROWS_WITH(check_formats(kldq::quant::Method::HQQ, L("nf4")), HasText("int4_g64_fz"));
  CHECK_THROWS_WITH(check_formats(kldq::quant::Method::GPTQ, L("int4_g64_fz")),
                    HasText("--method hqq"));
  CHECK_THROWS_WITH(f::quantize_rtn(at::zeros({2, 64}), f::FormatSpec::parse("int4_g64_fz")),
                    HasText("--method hqq"));
  CHECK_THROWS_WITH(quantize_hqq(at::zeros({2, 64}), f::FormatSpec::parse("int4_g64_asym"), {}),
                    HasText("_fz"));
}

TEST_CASE("HQQ on CUDA fits what the CPU fits", "[cuda][hqq]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(21);
  const at::Tensor w = at::randn({512, 1536}) * 0.02;
  for (const char* name : {"int4_g64_fz", "int2_g32_fz"}) {
    INFO(name);
    const auto spec = f::FormatSpec::parse(name);
    const f::PackedWeight cpu = quantize_hqq(w, spec, {}), gpu = quantize_hqq(w.cuda(), spec, {});
    CHECK(gpu.codes.is_cuda());
    // Same arithmetic; the group means may sum in another order on the GPU, so zero points can
    // differ in their last bits and a code at a rounding tie may flip.
    const int bits = spec.traits().code_bits;
    const at::Tensor same = f::unpack_bits(cpu.codes, bits, w.size(1))
                                .eq(f::unpack_bits(gpu.codes.cpu(), bits, w.size(1)));
    CHECK(same.to(at::kFloat).mean().item<double>() > 0.999);
    CHECK(at::allclose(gpu.zeros.cpu().to(at::kFloat), cpu.zeros.to(at::kFloat), 1e-3, 1e-3));
    CHECK(at::equal(gpu.scales.cpu(), cpu.scales));
  }
}

TEST_CASE("kldq quantize --method hqq writes what eval fits in memory", "[quant][hqq][cli]") {
  kldq::test::TempDir dir("hqq-cli");
  const auto& tiny = kldq::test::tiny_model();
  const auto out = dir / "q";
  const std::string keep = "model.layers.0.mlp.up_proj";
  REQUIRE(kldq::test::run_kldq("quantize " + tiny.string() + " --base int3_g32_fz --method hqq" +
                               " --keep " + keep + " -o " + out.string())
              .rc == 0);
  const auto plan = nlohmann::json::parse(kldq::test::read_text(out / "quantization.json"));
  CHECK(plan["method"] == "hqq");
  CHECK(plan["method_settings"]["hqq"]["iters"] == 20);
  CHECK(plan["layers"][keep] == "bf16");
  const auto src = kldq::model::Decoder::load(tiny, c10::kCPU, c10::kFloat);
  const auto back = kldq::model::Decoder::load(out, c10::kCPU, c10::kFloat);
  for (const auto& id : src.linear_ids()) {
    if (id.name() == keep) continue;
    INFO(id.name());
    const auto want =
        quantize_hqq(src.linear(id).weight(), f::FormatSpec::parse("int3_g32_fz"), {});
    const auto wp = want.parts(), gp = back.linear(id).packed().parts();
    REQUIRE(wp.size() == gp.size());
    for (size_t i = 0; i < wp.size(); ++i) CHECK(at::equal(wp[i], gp[i]));
  }
  // A whole-model fit written and read back gives the KL of the same fit made in memory (the
  // embedded model: it has a tokenizer).
  const std::string real = KLDQ_SOURCE_DIR "/models/wikitext-qwen2-4m";
  const auto all = dir / "all";
  REQUIRE(kldq::test::run_kldq("quantize " + real + " --base int3_g32_fz --method hqq -o " +
                               all.string())
              .rc == 0);
  auto kl = [&](const std::string& model, const std::string& extra, const std::string& name) {
    const auto j = dir / name;
    const auto r = kldq::test::run_kldq("eval " + model + " --reference " + real + extra +
                                        " --ppl " KLDQ_SOURCE_DIR "/data/demo/wiki.test.head.txt" +
                                        " --ctx 64 --kld -o " + j.string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
    return nlohmann::json::parse(kldq::test::read_text(j))["kl_mean"].get<double>();
  };
  const double written = kl(all.string(), "", "written.json");
  CHECK(written > 0);
  CHECK(written == kl(real, " --base int3_g32_fz --method hqq", "memory.json"));
}

TEST_CASE("HQQ refuses zero points fp16 cannot hold", "[quant][hqq][errors]") {
  // A group from 4.0 to 4.0002: the inverse scale clamps at 2e4 and z = -8e4 (fp16 max 65504).
  at::Tensor w = at::randn({2, 64}) * 0.02;
  w[1].copy_(at::linspace(4.0, 4.0002, 64));
  CHECK_THROWS_WITH(quantize_hqq(w, f::FormatSpec::parse("int4_g64_fz"), {}, "layer L"),
                    HasText("layer L: HQQ zero points beyond fp16's range"));
}
