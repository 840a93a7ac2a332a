// Weight formats: names, exact byte accounting (hand-derived), bit packing (hand-derived bytes),
// round trips within each format's derived tolerance on random and real weights, NF4/FP4 parity
// with bitsandbytes (the oracle tests/oracle/bnb_oracle.py), and the rate-distortion gap.
#include <ATen/ATen.h>

#include "kldq/core/error.hpp"
#include "kldq/formats/packed.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/safetensors.hpp"
#include "support/catch.hpp"

using kldq::formats::FormatSpec;
namespace f = kldq::formats;

namespace {

const char* const kAll[] = {"bf16",          "fp16",
                            "fp8_e4m3",      "fp8_e4m3_tensor",
                            "fp8_e5m2",      "fp8_e4m3_noscale",
                            "int8",          "int4_g128",
                            "int4_g64_asym", "int4_g32",
                            "int3_g128",     "int3_g64_asym",
                            "int2_g128",     "int2_g32_asym",
                            "nf4",           "nf4_b128",
                            "fp4",           "fp4_b256"};

// Largest |w| of the quantization group each element belongs to, computed independently of the
// quantizer: [out, in].
at::Tensor group_absmax(const at::Tensor& w, const FormatSpec& s) {
  const at::Tensor a = w.abs();
  switch (s.traits().blocking) {
    case f::Blocking::NONE:
      return a;
    case f::Blocking::PER_CHANNEL:
      return s.per_tensor ? a.amax().expand_as(a) : a.amax(1, true).expand_as(a);
    case f::Blocking::GROUP: {
      at::Tensor out = at::empty_like(a);
      for (int64_t c = 0; c < a.size(1); c += s.group) {
        const int64_t len = std::min<int64_t>(s.group, a.size(1) - c);
        out.narrow(1, c, len).copy_(a.narrow(1, c, len).amax(1, true).expand({a.size(0), len}));
      }
      return out;
    }
    case f::Blocking::FLAT_BLOCK: {
      at::Tensor flat = a.reshape(-1), out = at::empty_like(flat);
      for (int64_t b = 0; b < flat.numel(); b += s.group) {
        const int64_t len = std::min<int64_t>(s.group, flat.numel() - b);
        out.narrow(0, b, len).fill_(flat.narrow(0, b, len).max());
      }
      return out.view_as(a);
    }
  }
  return a;
}

void check_round_trip(const at::Tensor& w, const std::string& name) {
  const FormatSpec s = FormatSpec::parse(name);
  const f::PackedWeight p = f::quantize_rtn(w, s);
  INFO(name << " on [" << w.size(0) << ", " << w.size(1) << "]");
  CHECK(p.bytes() == s.bytes(w.size(0), w.size(1)));
  const at::Tensor d = f::dequantize(p);
  REQUIRE(d.sizes() == w.sizes());
  // Element bound: the format's tolerance times its group's absmax (for unscaled formats times
  // |w|), plus half the smallest subnormal step where the format has one near the values.
  double floor = 0;
  if (s.format == f::Format::FP8_E4M3_NOSCALE) floor = std::ldexp(1.0, -10);
  if (s.format == f::Format::FP16) floor = std::ldexp(1.0, -25);
  const at::Tensor bound = group_absmax(w, s) * s.traits().tolerance + floor + 1e-12;
  const at::Tensor err = (d - w).abs();
  CHECK((err <= bound).all().item<bool>());
  CHECK((err / bound).max().item<double>() > 0.0);  // not a lossless copy pretending
}

}  // namespace

TEST_CASE("format names parse, print and reject bad options", "[formats]") {
  CHECK(FormatSpec::parse("int4").name() == "int4_g128");
  CHECK(FormatSpec::parse("int4_g64_asym").name() == "int4_g64_asym");
  CHECK(FormatSpec::parse("nf4").group == 64);
  CHECK(FormatSpec::parse("nf4_b4096").name() == "nf4_b4096");
  CHECK(FormatSpec::parse("fp8_e4m3_noscale").format == f::Format::FP8_E4M3_NOSCALE);
  CHECK(FormatSpec::parse("fp8_e4m3_tensor").per_tensor);
  CHECK_THROWS_WITH(FormatSpec::parse("int5"), HasText("unknown format 'int5'"));
  CHECK_THROWS_WITH(FormatSpec::parse("int4_g100"), HasText("group size must be 32, 64 or 128"));
  CHECK_THROWS_WITH(FormatSpec::parse("nf4_b48"), HasText("power of two"));
  CHECK_THROWS_WITH(FormatSpec::parse("bf16_asym"), HasText("unknown option 'asym'"));
  CHECK_THROWS_AS(FormatSpec::parse("nf4_dq"), kldq::UnsupportedError);
}

TEST_CASE("byte accounting is exact", "[formats]") {
  // nf4 on a 1536 x 1536 weight: 4 bits per weight plus one fp32 absmax per 64 weights.
  CHECK(FormatSpec::parse("nf4").bytes(1536, 1536) == 1536ull * 1536 / 2 + 1536ull * 1536 / 64 * 4);
  // int4_g128 on [64, 172]: 86 bytes of codes per row, 2 groups of fp16 scales per row.
  CHECK(FormatSpec::parse("int4_g128").bytes(64, 172) == 64 * 86 + 64 * 2 * 2);
  CHECK(FormatSpec::parse("int4_g128_asym").bytes(64, 172) == 64 * 86 + 64 * 2 * 2 + 64 * 2);
  // int3: 172 * 3 = 516 bits = 65 bytes per row.
  CHECK(FormatSpec::parse("int3_g64").bytes(64, 172) == 64 * 65 + 64 * 3 * 2);
  CHECK(FormatSpec::parse("fp8_e4m3").bytes(10, 20) == 200 + 10 * 4);
  CHECK(FormatSpec::parse("fp8_e4m3_tensor").bytes(10, 20) == 200 + 4);
  CHECK(FormatSpec::parse("bf16").bits_per_weight(8, 8) == 16.0);
  CHECK(FormatSpec::parse("nf4").bits_per_weight(64, 64) == Approx(4.5));
}

TEST_CASE("bit packing follows the documented LSB-first layout", "[formats]") {
  const at::Tensor c3 = at::tensor({1, 2, 3}, at::kByte).view({1, 3});
  // bits 0-2: 001, 3-5: 010, 6-8: 011 -> byte0 = 1 | 2 << 3 | (3 & 3) << 6 = 209, byte1 = 3 >> 2.
  CHECK(at::equal(f::pack_bits(c3, 3), at::tensor({209, 0}, at::kByte).view({1, 2})));
  CHECK(at::equal(f::pack_bits(at::tensor({1, 2}, at::kByte).view({1, 2}), 4),
                  at::tensor({33}, at::kByte).view({1, 1})));
  at::manual_seed(2);
  for (int bits : {2, 3, 4, 8}) {
    const at::Tensor codes = at::randint(0, 1 << bits, {5, 173}, at::kByte);
    CHECK(at::equal(f::unpack_bits(f::pack_bits(codes, bits), bits, 173), codes));
  }
}

TEST_CASE("every format round-trips within its tolerance", "[formats]") {
  at::manual_seed(1);
  const at::Tensor shapes[] = {at::randn({64, 172}) * 0.05, at::randn({37, 128}) * 2.0,
                               at::randn({8, 300}) * 1e-3};
  for (const char* name : kAll)
    for (const auto& w : shapes) check_round_trip(w, name);
  // Real trained weights (stories260K), every linear layer.
  if (const auto dir = kldq::test::shared_data("models/stories260k-qwen2")) {
    const auto ck = kldq::io::Checkpoint::open(*dir);
    for (const char* name : kAll)
      for (const char* t :
           {"model.layers.0.self_attn.q_proj.weight", "model.layers.2.mlp.down_proj.weight"})
        check_round_trip(ck.tensor(t), name);
  }
}

TEST_CASE("all-zero groups quantize to zero", "[formats]") {
  const at::Tensor w = at::zeros({4, 128});
  for (const char* name : kAll)
    CHECK(f::dequantize(f::quantize_rtn(w, FormatSpec::parse(name))).abs().max().item<double>() ==
          0.0);
}

TEST_CASE("NF4 and FP4 match bitsandbytes' quantize_4bit", "[formats]") {
  const auto py = kldq::test::python_with("bitsandbytes safetensors");
  if (!py) KLDQ_SKIP("no Python with bitsandbytes");
  kldq::test::TempDir dir("bnb");
  const auto r = kldq::test::run_command(*py + " " KLDQ_SOURCE_DIR "/tests/oracle/bnb_oracle.py " +
                                         (dir / "bnb.st").string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const auto ref = kldq::io::SafetensorsFile::open(dir / "bnb.st");
  int cases = 0;
  for (int k = 0; ref->find("w_" + std::to_string(k)); ++k, ++cases) {
    const std::string s = std::to_string(k);
    const at::Tensor meta = ref->tensor("meta_" + s);
    const bool nf4 = meta[1].item<int64_t>() == 1;
    const FormatSpec spec =
        FormatSpec::parse(fmt::format("{}_b{}", nf4 ? "nf4" : "fp4", meta[0].item<int64_t>()));
    const f::PackedWeight p = f::quantize_rtn(ref->tensor("w_" + s), spec);
    INFO("case " << k << " " << spec.name());
    CHECK(at::equal(p.scales, ref->tensor("absmax_" + s)));
    if (nf4) {
      CHECK(at::equal(p.codes, ref->tensor("codes_" + s)));
      CHECK(at::equal(f::dequantize(p).reshape(-1), ref->tensor("deq_" + s).reshape(-1)));
    } else {
      // bitsandbytes' CPU table rounds FP4 values to 4 decimals; elements whose interval that
      // rounding changes (flagged by the oracle) may take the neighbouring code.
      const at::Tensor near = ref->tensor("near_" + s).to(at::kBool);
      const at::Tensor mine = f::unpack_bits(p.codes.view({-1, 1}), 8, 1).view(-1);
      const at::Tensor theirs = ref->tensor("codes_" + s);
      auto nibbles = [](const at::Tensor& b) {
        return at::stack({b.__rshift__(4), b.bitwise_and(15)}, 1).reshape(-1);
      };
      const at::Tensor a = nibbles(mine).narrow(0, 0, near.numel()),
                       b = nibbles(theirs).narrow(0, 0, near.numel());
      CHECK(at::equal(a.masked_select(~near), b.masked_select(~near)));
      CHECK(near.to(at::kFloat).mean().item<double>() < 1e-3);
      const at::Tensor deq = f::dequantize(p).reshape(-1),
                       want = ref->tensor("deq_" + s).reshape(-1);
      const at::Tensor bound = group_absmax(ref->tensor("w_" + s), spec).reshape(-1) * 2e-4 + 1e-12;
      CHECK(((deq - want).abs() <= bound).masked_select(~near).all().item<bool>());
    }
  }
  CHECK(cases == 7);
}

TEST_CASE("Gaussian weights stay above the rate-distortion bound", "[formats]") {
  at::manual_seed(9);
  const at::Tensor w = at::randn({256, 512});
  for (const char* name : {"int8", "int4_g128", "int3_g64", "nf4", "fp4", "fp8_e4m3"}) {
    const auto e = f::weight_error(w, f::quantize_rtn(w, FormatSpec::parse(name)));
    INFO(name << ": " << e.bits_per_weight << " bits, gap " << e.rd_gap_bits << ", sqnr "
              << e.sqnr_db);
    // No scalar quantizer beats the Gaussian rate-distortion bound; practical ones sit within
    // a few bits of it (about 0.25 bit for entropy-coded uniform quantizers at high rate).
    CHECK(e.rd_gap_bits > 0.0);
    CHECK(e.rd_gap_bits < 3.0);
    CHECK(e.sqnr_db == Approx(10 * std::log10(1.0 / e.mse)).epsilon(0.02));
  }
}

TEST_CASE("weights of one format stack by rows and split back", "[formats]") {
  at::manual_seed(9);
  // Members of a q/k/v-like group: [48, 256], [16, 256], [16, 256]. Oracle: each member's own
  // CPU dequantization; the stacked weight must dequantize to their rows in order, and its row
  // views must hold the members' stored tensors exactly.
  const std::vector<int64_t> outs = {48, 16, 16};
  for (const char* name : kAll) {
    INFO(name);
    const FormatSpec s = FormatSpec::parse(name);
    std::vector<f::PackedWeight> members;
    std::vector<at::Tensor> dense;
    for (int64_t out : outs) {
      members.push_back(f::quantize_rtn(at::randn({out, 256}), s));
      dense.push_back(f::dequantize(members.back()));
    }
    std::vector<const f::PackedWeight*> ptrs;
    for (const auto& m : members) ptrs.push_back(&m);
    const auto joined = f::PackedWeight::concat_rows(ptrs);
    if (s.per_tensor) {  // one scale per weight: members' scales differ, no stacking
      CHECK_FALSE(joined.has_value());
      continue;
    }
    REQUIRE(joined.has_value());
    CHECK(joined->out == 80);
    CHECK(joined->bytes() == s.bytes(80, 256));
    CHECK(at::equal(f::dequantize(*joined), at::cat(dense, 0)));
    int64_t row = 0;
    for (size_t i = 0; i < outs.size(); ++i) {
      const f::PackedWeight back = joined->rows(row, outs[i]);
      const auto a = back.parts(), b = members[i].parts();
      REQUIRE(a.size() == b.size());
      for (size_t k = 0; k < a.size(); ++k) CHECK(at::equal(a[k], b[k]));
      CHECK(at::equal(f::dequantize(back), dense[i]));
      row += outs[i];
    }
  }
}

TEST_CASE("weights that do not stack by rows are refused", "[formats]") {
  at::manual_seed(9);
  {
    const at::Tensor w = at::randn({16, 96});
    const auto a = f::quantize_rtn(w, FormatSpec::parse("nf4")), b = a;  // 96 % 64: split blocks
    CHECK_FALSE(a.rows_split());
    CHECK_FALSE(f::PackedWeight::concat_rows({&a, &b}).has_value());
    const auto c = f::quantize_rtn(at::randn({16, 128}), FormatSpec::parse("int4_g128"));
    const auto d = f::quantize_rtn(at::randn({16, 128}), FormatSpec::parse("int4_g64"));
    const auto e = f::quantize_rtn(at::randn({16, 256}), FormatSpec::parse("int4_g128"));
    CHECK_FALSE(f::PackedWeight::concat_rows({&c, &d}).has_value());  // formats differ
    CHECK_FALSE(f::PackedWeight::concat_rows({&c, &e}).has_value());  // columns differ
    CHECK_THROWS(a.rows(0, 8));
    CHECK_THROWS(c.rows(8, 9));
  }
}
