// CUDA dequantization kernels against the CPU reference dequantizer, bit for bit: every format,
// odd shapes (172 columns, single rows, sizes that are not multiples of 8), the vector and the
// scalar paths, fp32/fp16/bf16 outputs; the fused dequantize + GEMV against a float64 product of
// the weights it multiplies (factored_weights); and QLinear on CUDA (both paths) against a dense
// GEMM.
#include <ATen/ATen.h>

#include <string>

#include "kldq/formats/packed.hpp"
#include "kldq/kernels/dequant.hpp"
#include "kldq/kernels/fused.hpp"
#include "kldq/model/qlinear.hpp"
#include "kldq/quant/hqq.hpp"
#include "support/catch.hpp"

namespace f = kldq::formats;

namespace {

// Bitwise equality (distinguishes -0.0 from 0.0, unlike at::equal).
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const auto as_int = a.element_size() == 4 ? at::kInt : at::kShort;
  return at::equal(a.contiguous().view(as_int), b.contiguous().view(as_int));
}

// The weights the fused GEMV multiplies x by, in float64 (the format's rules, stated here apart
// from the kernels): bf16/fp16 products of 4-bit integer codes in groups of 128 that tile the
// rows take the format's exact values (code - zero) x scale; those of nf4/fp4 in blocks of 64
// (or more) over rows of whole 128-column segments take the code value rounded to dtype times
// the fp32 absmax, unrounded; every other product the dequantized weight rounded to dtype.
at::Tensor factored_weights(const f::PackedWeight& p, at::ScalarType dtype) {
  const f::FormatSpec& spec = p.spec;
  const bool tc = dtype != at::kFloat;
  if (tc && spec.format == f::Format::INT4 && spec.group == 128 && !spec.float_zero &&
      p.in % 128 == 0)
    return f::dequantize(p).to(at::kDouble);
  const bool float4 = spec.format == f::Format::NF4 || spec.format == f::Format::FP4;
  if (tc && float4 && spec.group % 64 == 0 && p.in % 128 == 0) {
    f::PackedWeight unit = p;  // absmax 1: dequantize gives the code values themselves
    unit.scales = at::ones_like(p.scales);
    const at::Tensor codes = f::dequantize(unit).to(dtype).to(at::kDouble).flatten();
    // Blocks run over the flattened weight; the last may be partial.
    const at::Tensor absmax =
        p.scales.to(at::kDouble).repeat_interleave(spec.group).narrow(0, 0, codes.numel());
    return (codes * absmax).view({p.out, p.in});
  }
  return f::dequantize(p).to(dtype).to(at::kDouble);
}

}  // namespace

TEST_CASE("CUDA dequantization equals the CPU reference bit for bit", "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(11);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {7, 13}, {3, 172}, {64, 172}, {172, 64}, {5, 200}, {33, 96}, {256, 4096}, {1, 8}};
  for (const char* name :
       {"nf4",           "nf4_b32",  "nf4_b4096",       "fp4",         "int4_g128",
        "int4_g32_asym", "int3_g64", "int3_g128_asym",  "int2_g32",    "int2_g64_asym",
        "int8",          "fp8_e4m3", "fp8_e4m3_tensor", "fp8_e5m2",    "fp8_e4m3_noscale",
        "bf16",          "fp16",     "int4_g64_fz",     "int3_g32_fz", "int2_g128_fz"}) {
    for (const auto& [out, in] : shapes) {
      const at::Tensor w = at::randn({out, in}) * 0.05;
      const auto spec = f::FormatSpec::parse(name);  // fz: fp16 zero points, made by HQQ
      const f::PackedWeight p =
          spec.float_zero ? kldq::quant::quantize_hqq(w, spec, {}) : f::quantize_rtn(w, spec);
      const f::PackedWeight g = p.to(c10::kCUDA);
      const at::Tensor ref = f::dequantize(p);  // [out, in] fp32
      for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
        INFO(name << " [" << out << ", " << in << "] " << c10::toString(dtype));
        CHECK(same_bits(kldq::kernels::dequantize(g, dtype).cpu(), ref.to(dtype)));
        // The scalar path: a destination one element off 16-byte alignment.
        at::Tensor buf = at::empty({out * in + 1}, g.codes.options().dtype(dtype));
        at::Tensor dst = buf.narrow(0, 1, out * in).view({out, in});
        kldq::kernels::dequantize_into(g, dst);
        CHECK(same_bits(dst.cpu(), ref.to(dtype)));
      }
    }
  }
}

TEST_CASE("QLinear on CUDA equals a dense GEMM on the dequantized weight", "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(12);
  const auto opts = at::TensorOptions().device(c10::kCUDA).dtype(at::kBFloat16);
  const at::Tensor x = at::randn({4, 9, 1536}, opts);     // 36 rows: dequantize + GEMM
  const at::Tensor step = at::randn({4, 1, 1536}, opts);  // a decode step: the fused GEMV
  const at::Tensor b = at::randn({512}, opts);
  auto ws = std::make_shared<kldq::kernels::Workspace>();
  for (const char* name : {"nf4", "int4_g128", "int8", "fp8_e4m3"}) {
    INFO(name);
    const f::PackedWeight p =
        f::quantize_rtn(at::randn({512, 1536}) * 0.02, f::FormatSpec::parse(name));
    const kldq::model::QLinear layer(p.to(c10::kCUDA), b, at::kBFloat16, ws);
    const at::Tensor wd = f::dequantize(p).to(opts);
    CHECK_FALSE(kldq::kernels::gemv_applies(layer.packed(), x, b));
    CHECK(at::equal(layer.forward(x), at::linear(x, wd, b)));
    REQUIRE(kldq::kernels::gemv_applies(layer.packed(), step, b));
    const at::Tensor got = layer.forward(step).to(at::kFloat),
                     want = at::linear(step, wd, b).to(at::kFloat);
    // Same bf16 weights (int8, fp8; int4_g128 and nf4 here take the factored products, whose
    // weights are within bf16 rounding of these) and inputs, fp32 sums in another order:
    // within bf16 rounding.
    CHECK((got - want).abs().max().item<float>() <= 0x1p-7 * want.abs().max().item<float>());
  }
}

TEST_CASE("RTN quantization on CUDA gives the CPU's packed tensors bit for bit",
          "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(13);
  for (const char* name : {"nf4", "nf4_b128", "fp4", "int4_g128", "int4_g32_asym", "int3_g64",
                           "int3_g128_asym", "int2_g64", "int8", "fp8_e4m3", "fp8_e4m3_tensor",
                           "fp8_e5m2", "fp8_e4m3_noscale", "bf16"}) {
    for (const auto& [out, in] :
         std::vector<std::pair<int64_t, int64_t>>{{7, 13}, {64, 172}, {256, 1536}}) {
      INFO(name << " [" << out << ", " << in << "]");
      at::Tensor w = at::randn({out, in}) * 0.05;
      w[0].zero_();  // an all-zero row: zero scales
      const auto spec = f::FormatSpec::parse(name);
      const auto cpu = f::quantize_rtn(w, spec).parts();
      const auto gpu = f::quantize_rtn(w.cuda(), spec).parts();
      REQUIRE(cpu.size() == gpu.size());
      for (size_t i = 0; i < cpu.size(); ++i) {
        CHECK(gpu[i].is_cuda());
        const at::Tensor g = gpu[i].cpu();
        CHECK(at::equal(g.view(at::kByte), cpu[i].view(at::kByte)));
      }
    }
  }
}

TEST_CASE("Fused dequantize + GEMV on CUDA equals a float64 product of the dequantized weights",
          "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(14);
  // The tensor-core kernel (bf16/fp16) reads quads of 4 chunks, so it takes widths in % 32 == 0
  // only (the others go to dequantize + GEMM); it runs 16-warp blocks for few row tiles and
  // 4-warp blocks once there are 4 per SM (8,448 rows on 132 SMs): [8963, 224] takes the latter,
  // with a partial last tile and a partial last column segment (224 = 128 + 96). Factored nf4/fp4
  // keep two segments in flight where tiles <= SMs or in 4-warp blocks of rows <= 2,048 columns,
  // one otherwise (factored_unroll): [4096, 256] (256 tiles of 16-warp blocks, more than an H100's
  // or H200's 132 SMs) and, for nf4 only (their size), [8963, 1024] (4-warp, two segments a warp
  // in flight) and [8450, 2304] (4-warp, 18 segments a row: one).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 8},      {7, 64},     {33, 96},    {5, 200},     {5, 224},
      {256, 1536}, {96, 4104},  {96, 4128},  {96, 4096},   {4096, 256},
      {8963, 200}, {8963, 224}, {8963, 384}, {8963, 1024}, {8450, 2304}};
  for (const char* name :
       {"nf4", "nf4_b32", "nf4_b256", "fp4", "int4_g128", "int4_g128_asym", "int4_g32_asym",
        "int3_g64", "int3_g128_asym", "int2_g64", "int8", "fp8_e4m3", "fp8_e4m3_tensor", "fp8_e5m2",
        "fp8_e4m3_noscale", "int4_g64_fz"}) {
    for (const auto& [out, in] : shapes) {
      if (out * in > 5'000'000 && std::string(name) != "nf4") continue;
      const auto spec = f::FormatSpec::parse(name);
      const at::Tensor w = at::randn({out, in}) * 0.05;
      const f::PackedWeight p =
          spec.float_zero ? kldq::quant::quantize_hqq(w, spec, {}) : f::quantize_rtn(w, spec);
      const f::PackedWeight g = p.to(c10::kCUDA);
      for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
        const auto opts = at::TensorOptions().device(c10::kCUDA).dtype(dtype);
        // The weights the GEMM path would use: dequantized, rounded once to dtype; or those of
        // the factored products (bf16/fp16, gemv_factored.cuh).
        const at::Tensor wq = factored_weights(p, dtype);  // [out, in] float64
        // fp32 rows take the SIMT kernel (at most 4), bf16/fp16 the tensor cores (at most 16:
        // one or two 8-row tiles of the MMA's n, padded with copies of the last row).
        const std::vector<int64_t> counts = dtype == at::kFloat
                                                ? std::vector<int64_t>{1, 2, 3, 4}
                                                : std::vector<int64_t>{1, 3, 8, 9, 16};
        for (int64_t m : counts) {
          INFO(name << " [" << out << ", " << in << "] " << c10::toString(dtype) << " rows " << m);
          const at::Tensor x = at::randn({1, m, in}, opts);
          const at::Tensor bias = m % 2 ? at::randn({out}, opts) : at::Tensor();
          if (dtype != at::kFloat && in % 32 != 0) {
            CHECK_FALSE(kldq::kernels::gemv_applies(g, x, bias));
            continue;
          }
          REQUIRE(kldq::kernels::gemv_applies(g, x, bias));
          const at::Tensor y = kldq::kernels::gemv(g, x, bias).cpu().to(at::kDouble);
          const at::Tensor xd = x.cpu().to(at::kDouble);
          at::Tensor ref = at::matmul(xd, wq.t());  // [1, m, out]
          if (bias.defined()) ref = ref + bias.cpu().to(at::kDouble);
          // Bound: one rounding of the output to dtype plus fp32 summation error over `in` terms.
          const double rel = dtype == at::kBFloat16 ? 0x1p-8
                             : dtype == at::kHalf   ? 0x1p-11
                                                    : 0x1p-23;
          const at::Tensor mag = at::matmul(xd.abs(), wq.abs().t());
          const at::Tensor bound = ref.abs() * rel + mag * (in * 0x1p-24) + 1e-30;
          CHECK((y - ref).abs().le(bound).all().item<bool>());
        }
      }
      // More rows than the kernels take, or a misaligned x: not taken.
      const at::Tensor big = at::randn({5, in}, at::TensorOptions().device(c10::kCUDA));
      CHECK_FALSE(kldq::kernels::gemv_applies(g, big, {}));
      const at::Tensor big16 = at::randn({17, in}, big.options().dtype(at::kBFloat16));
      CHECK_FALSE(kldq::kernels::gemv_applies(g, big16, {}));
      CHECK(kldq::kernels::gemv_applies(g, big16.narrow(0, 0, 16), {}) == (in % 32 == 0));
      CHECK_FALSE(kldq::kernels::gemv_applies(g, big.flatten().narrow(0, 1, in).view({1, in}), {}));
    }
  }
}

TEST_CASE("The fused GEMV's SwiGLU epilogue equals silu_mul of the fused GEMV", "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(15);
  // Rows [gate; up] of 2 i: block b holds gate rows 8b.. and their up rows; with 2 i = 8960 the
  // 4-warp blocks, with 2 i = 1024 the 16-warp ones; widths of 256 and 384 take the factored
  // products of nf4 and int4_g128. The oracle: the plain product's outputs (checked above
  // against a float64 product) through silu_mul (checked against transformers' formula in
  // test_fused.cpp), value for value.
  for (const char* name : {"nf4", "int4_g128", "int4_g32_asym", "int8", "fp8_e4m3"}) {
    for (const auto& [out, in] : std::vector<std::pair<int64_t, int64_t>>{
             {1024, 96}, {8960, 224}, {1024, 256}, {8960, 384}}) {
      const at::Tensor w = at::randn({out, in}) * 0.05;
      const f::PackedWeight g = f::quantize_rtn(w, f::FormatSpec::parse(name)).to(c10::kCUDA);
      for (auto dtype : {at::kHalf, at::kBFloat16}) {
        const auto opts = at::TensorOptions().device(c10::kCUDA).dtype(dtype);
        for (int64_t m : {1, 3, 9, 16}) {
          INFO(name << " [" << out << ", " << in << "] " << c10::toString(dtype) << " rows " << m);
          const at::Tensor x = at::randn({1, m, in}, opts) * 4;
          const at::Tensor bias = m % 2 ? at::randn({out}, opts) : at::Tensor();
          REQUIRE(kldq::kernels::gemv_swiglu_applies(g, x, bias));
          const at::Tensor got = kldq::kernels::gemv_swiglu(g, x, bias);  // [1, m, out / 2]
          const at::Tensor want = kldq::kernels::silu_mul(kldq::kernels::gemv(g, x, bias));
          REQUIRE(got.sizes() == want.sizes());
          CHECK(at::equal(got, want));
        }
      }
      const at::Tensor x32 = at::randn({1, in}, at::TensorOptions().device(c10::kCUDA));
      CHECK_FALSE(kldq::kernels::gemv_swiglu_applies(g, x32, {}));  // fp32: the SIMT kernel
    }
  }
  // Rows not a multiple of 16: not taken.
  const f::PackedWeight odd =
      f::quantize_rtn(at::randn({1000, 96}), f::FormatSpec::parse("nf4")).to(c10::kCUDA);
  const at::Tensor x =
      at::randn({1, 96}, at::TensorOptions().device(c10::kCUDA).dtype(at::kBFloat16));
  CHECK(kldq::kernels::gemv_applies(odd, x, {}));
  CHECK_FALSE(kldq::kernels::gemv_swiglu_applies(odd, x, {}));
}
