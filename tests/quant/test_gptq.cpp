// Quantization grids and GPTQ on single weights: make_grid + pack_on_grid against quantize_rtn
// (itself checked against bitsandbytes and hand-derived values in test_formats), GPTQ against an
// independent Python transcription of the published algorithm (tests/oracle/gptq_oracle.py), and
// its numerics: dead inputs, all-zero inputs, a singular Hessian, non-finite activations.
#include <ATen/ATen.h>

#include <optional>

#include "kldq/core/error.hpp"
#include "kldq/formats/grid.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/quant/gptq.hpp"
#include "support/catch.hpp"
#include "support/support.hpp"

namespace f = kldq::formats;
namespace q = kldq::quant;

namespace {

// Correlated inputs (as real activations are): X = Z M, Z ~ N(0, 1), M mixing neighbouring
// channels, some channels much larger than others.
at::Tensor activations(int64_t tokens, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor z = at::randn({tokens, in});
  const at::Tensor mix = at::eye(in) + 0.5 * at::randn({in, in}) / std::sqrt(double(in));
  return at::matmul(z, mix) * (at::rand({in}) * 3 + 0.2);
}

double trace_error(const at::Tensor& w, const at::Tensor& q, const at::Tensor& h) {
  const at::Tensor d = (w - q).to(at::kDouble);
  return (at::matmul(d, h.to(at::kDouble)) * d).sum().item<double>();
}

// The oracle's quantized weight for (w, h) under `cfg`, or nullopt without a Python with torch.
std::optional<at::Tensor> oracle(const at::Tensor& w, const at::Tensor& h, const std::string& cfg) {
  const auto py = kldq::test::python_with("torch safetensors");
  if (!py) return std::nullopt;
  kldq::test::TempDir dir("gptq-oracle");
  kldq::io::write_safetensors(dir / "in.safetensors", {{"W", w}, {"H", h}});
  const auto r = kldq::test::run_command(*py + " " KLDQ_SOURCE_DIR "/tests/oracle/gptq_oracle.py " +
                                         (dir / "in.safetensors").string() + " " +
                                         (dir / "out.safetensors").string() + " '" + cfg + "'");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  return kldq::io::SafetensorsFile::open(dir / "out.safetensors")->tensor("Q").clone();
}

}  // namespace

TEST_CASE("grids: make_grid + pack_on_grid is round-to-nearest, bit for bit", "[quant]") {
  at::manual_seed(4);
  const at::Tensor w = at::randn({24, 256}) * (at::rand({24, 1}) + 0.1);
  w[3].zero_();  // an all-zero row: zero scales
  for (const char* name : {"int4_g32", "int4_g128_asym", "int3_g64", "int2_g32_asym", "int8",
                           "fp8_e4m3", "fp8_e5m2", "nf4", "fp4_b128", "nf4_b256"}) {
    INFO(name);
    const auto spec = f::FormatSpec::parse(name);
    REQUIRE(f::has_grid(spec, 256));
    const f::PackedWeight want = f::quantize_rtn(w, spec);
    const f::Grid grid = f::make_grid(w, spec);
    const f::PackedWeight got = f::pack_on_grid(w, grid);
    CHECK(at::equal(got.codes, want.codes));
    CHECK(at::equal(got.scales, want.scales));
    CHECK(got.zeros.defined() == want.zeros.defined());
    if (want.zeros.defined()) CHECK(at::equal(got.zeros, want.zeros));
    // The fake-quantized values are the packed weight's dequantized ones, and lie on the grid.
    const at::Tensor values = f::fake_quantize(w, grid);
    CHECK(at::equal(values, f::dequantize(want)));
    // (fp4 has two codes for zero, so the values, not the codes, round-trip.)
    CHECK(at::equal(f::dequantize(f::pack_on_grid(values, grid)), values));
  }
  CHECK_FALSE(f::has_grid(f::FormatSpec::parse("bf16"), 256));
  CHECK_FALSE(f::has_grid(f::FormatSpec::parse("fp8_e4m3_noscale"), 256));
  CHECK_FALSE(f::has_grid(f::FormatSpec::parse("fp8_e4m3_tensor"), 256));
  CHECK_FALSE(f::has_grid(f::FormatSpec::parse("nf4"), 172));  // blocks would span rows
  CHECK_THROWS_AS(f::make_grid(w, f::FormatSpec::parse("bf16")), kldq::UnsupportedError);
}

TEST_CASE("gptq: equals an independent transcription of the algorithm", "[quant]") {
  const at::Tensor x = activations(600, 256, 7);
  at::manual_seed(8);
  const at::Tensor w = at::randn({40, 256}) * 0.05;
  struct Case {
    const char* format;
    std::string cfg;
    bool act_order;
    double damp;
    bool dead;
  };
  const std::vector<Case> cases = {
      {"int4_g128", R"({"bits":4,"group":128,"sym":true,"damp":0.01})", false, 0.01, false},
      {"int4_g32_asym", R"({"bits":4,"group":32,"sym":false,"damp":0.01})", false, 0.01, false},
      {"int3_g64", R"({"bits":3,"group":64,"sym":true,"damp":0.01,"act_order":true})", true, 0.01,
       false},
      {"int2_g32", R"({"bits":2,"group":32,"sym":true,"damp":0.1,"act_order":true})", true, 0.1,
       false},
      {"int4_g64", R"({"bits":4,"group":64,"sym":true,"damp":0.01})", false, 0.01, true},
  };
  bool ran = false;
  for (const Case& c : cases) {
    INFO(c.format << " act_order " << c.act_order << " dead " << c.dead);
    at::Tensor xc = x.clone();
    if (c.dead) xc.narrow(1, 5, 3).zero_();  // three inputs never active
    q::Hessian h;
    h.add(xc.view({2, 300, 256}));
    CHECK(h.tokens() == 600);
    CHECK(at::allclose(h.matrix(), 2 * at::matmul(xc.t(), xc), 1e-4, 1e-2));
    const auto r = q::gptq_quantize(w, h.matrix(), f::FormatSpec::parse(c.format),
                                    {c.damp, 128, c.act_order}, "test");
    CHECK(r.dead == (c.dead ? 3 : 0));
    CHECK(r.error < 0.8 * r.rtn_error);  // correlated inputs: GPTQ clearly beats RTN
    CHECK(r.error == Approx(trace_error(w, r.q, h.matrix())).epsilon(1e-4));
    // Values on the grid: packing and dequantizing gives them back.
    CHECK(at::equal(f::dequantize(f::pack_on_grid(r.q, r.grid)), r.q));
    const auto want = oracle(w, h.matrix(), c.cfg);
    if (!want) continue;
    ran = true;
    // fp32 rounding (BLAS order, Cholesky) can move a value near a decision boundary to the
    // neighbouring code, after which the two runs' updates differ slightly.
    const double differ = (r.q != *want).to(at::kDouble).mean().item<double>();
    CHECK(differ < 0.01);
    CHECK(r.error == Approx(trace_error(w, *want, h.matrix())).epsilon(0.01));
  }
  if (!ran) KLDQ_SKIP("no Python with torch and safetensors: GPTQ checked without the oracle");
}

TEST_CASE("gptq: lazy batch size does not change the result", "[quant]") {
  const at::Tensor x = activations(300, 192, 9);
  at::manual_seed(10);
  const at::Tensor w = at::randn({16, 192});
  const at::Tensor h = 2 * at::matmul(x.t(), x);
  const auto spec = f::FormatSpec::parse("int4_g32");
  const auto a = q::gptq_quantize(w, h, spec, {0.01, 128, false}, "a");
  const auto b = q::gptq_quantize(w, h, spec, {0.01, 32, false}, "b");
  CHECK((a.q != b.q).to(at::kDouble).mean().item<double>() < 0.005);
  CHECK(a.error == Approx(b.error).epsilon(1e-3));
}

TEST_CASE("gptq: zero inputs, a singular Hessian, non-finite activations", "[quant]") {
  at::manual_seed(11);
  const at::Tensor w = at::randn({8, 64});
  const auto spec = f::FormatSpec::parse("int4_g32");
  // A layer whose inputs are all zero: every input dead, plain round-to-nearest.
  const auto zero = q::gptq_quantize(w, at::zeros({64, 64}), spec, {}, "zero");
  CHECK(zero.dead == 64);
  CHECK(at::equal(zero.q, f::fake_quantize(w, f::make_grid(w, spec))));
  // Four tokens for 64 inputs: H has rank 4; without dampening its Cholesky factorisation fails
  // and is retried with dampening that works.
  const at::Tensor x = at::randn({4, 64});
  const auto singular = q::gptq_quantize(w, 2 * at::matmul(x.t(), x), spec, {0.0, 128, false}, "s");
  CHECK(singular.damp > 0);
  CHECK(singular.q.isfinite().all().item<bool>());
  CHECK(singular.error <= singular.rtn_error);
  // Non-finite activations: no dampening helps; the error names the layer.
  at::Tensor bad = 2 * at::matmul(x.t(), x);
  bad[0][0] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(q::gptq_quantize(w, bad, spec, {}, "model.layers.3.mlp.up_proj"),
                    HasText("gptq: model.layers.3.mlp.up_proj: the Hessian is not positive"));
  // A format without a grid.
  CHECK_THROWS_AS(q::gptq_quantize(w, at::eye(64), f::FormatSpec::parse("bf16"), {}, "x"),
                  kldq::UnsupportedError);
}

TEST_CASE("gptq: every format with a grid, its stored tensors the RTN format's", "[quant]") {
  const at::Tensor x = activations(400, 256, 12);
  at::manual_seed(13);
  const at::Tensor w = at::randn({32, 256}) * 0.05;
  const at::Tensor h = 2 * at::matmul(x.t(), x);
  for (const char* name : {"nf4", "fp4_b128", "int8", "fp8_e4m3", "int4_g64_asym", "int3_g128"}) {
    for (const bool act_order : {false, true}) {
      INFO(name << " act_order " << act_order);
      const auto spec = f::FormatSpec::parse(name);
      const auto r = q::gptq_quantize(w, h, spec, {0.01, 128, act_order}, name);
      CHECK(r.error < r.rtn_error);
      const f::PackedWeight p = f::pack_on_grid(r.q, r.grid);
      // The same tensors, dtypes and shapes as the format's RTN output, decoding to GPTQ's values.
      const f::PackedWeight rtn = f::quantize_rtn(w, spec);
      REQUIRE(p.parts().size() == rtn.parts().size());
      for (size_t i = 0; i < p.parts().size(); ++i) {
        CHECK(p.parts()[i].scalar_type() == rtn.parts()[i].scalar_type());
        CHECK(p.parts()[i].sizes() == rtn.parts()[i].sizes());
      }
      CHECK(at::allclose(f::dequantize(p), r.q, 0, 1e-6));
    }
  }
}

TEST_CASE("grids: fp8 saturates beyond its largest value instead of overflowing", "[quant]") {
  // GPTQ's error updates can carry a column past the row maximum its fp8 scale was taken from;
  // PyTorch's fp8 cast would then give NaN (e4m3fn) or inf (e5m2).
  const at::Tensor small = at::full({2, 4}, 1.0), big = at::full({2, 4}, 3.0);
  for (const auto& [name, max] :
       std::vector<std::pair<std::string, double>>{{"fp8_e4m3", 448.0}, {"fp8_e5m2", 57344.0}}) {
    INFO(name);
    const f::Grid grid = f::make_grid(small, f::FormatSpec::parse(name));  // scale 1 / max
    const at::Tensor v = f::fake_quantize(big, grid);
    CHECK(at::allclose(v, at::ones_like(v)));  // saturated at the grid's largest value, 1.0
    const at::Tensor d = f::dequantize(f::pack_on_grid(big, grid));
    CHECK(at::allclose(d, at::ones_like(d)));
    CHECK(grid.scale[0][0].item<double>() == Approx(1.0 / max));
  }
}
