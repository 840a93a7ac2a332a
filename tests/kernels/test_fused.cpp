// Fused CUDA kernels against transformers' formulas written out here with libtorch ops on the
// same GPU (the oracle): RoPE and SwiGLU must be bit-identical, RMSNorm may differ only where
// the fp32 reduction order moves a value across a rounding boundary.
#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kldq/kernels/fused.hpp"
#include "support/catch.hpp"

namespace {

at::Tensor hf_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  return w * (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type());
}

// cos/sin [T, d], or per-row [B, T, d]: broadcast over the heads of x [B, T, n, d].
at::Tensor hf_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t h = x.size(-1) / 2, heads = cos.dim() == 2 ? 1 : 2;
  at::Tensor rot = at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
  return x * cos.unsqueeze(heads) + rot * sin.unsqueeze(heads);
}

// Largest difference in units of the dtype's epsilon at the value's magnitude.
double max_ulps(const at::Tensor& a, const at::Tensor& b) {
  const double eps = a.scalar_type() == at::kBFloat16 ? 1.0 / 128
                     : a.scalar_type() == at::kHalf   ? 1.0 / 1024
                                                      : 1.2e-7;
  at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
  return ((af - bf).abs() / (bf.abs().clamp_min(1e-3) * eps)).max().item<double>();
}

// step_inputs from its definition, element by element on the host: rows b left-padded by pad[b],
// columns cols[t]; cos/sin rows at max(col - pad, 0); mask 0 where pad <= k <= col or (col < pad
// and k == col), else -inf.
kldq::kernels::StepInputs want_step_inputs(const std::vector<int64_t>& cols,
                                           const std::vector<int64_t>& pad, const at::Tensor& cos,
                                           const at::Tensor& sin, int64_t K) {
  const auto B = static_cast<int64_t>(pad.size()), T = static_cast<int64_t>(cols.size());
  const int64_t d = cos.size(1);
  const at::Tensor c = cos.cpu(), s = sin.cpu();
  kldq::kernels::StepInputs r{at::empty({B, T, d}, c.options()), at::empty({B, T, d}, c.options()),
                              at::empty({B, 1, T, K}, at::kFloat)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t col = cols[t], p = pad[b], pos = std::max<int64_t>(col - p, 0);
      r.cos[b][t].copy_(c[pos]);
      r.sin[b][t].copy_(s[pos]);
      for (int64_t k = 0; k < K; ++k) {
        const bool seen = (p <= k && k <= col) || (col < p && k == col);
        r.mask[b][0][t][k] = seen ? 0.0 : -std::numeric_limits<double>::infinity();
      }
    }
  r.mask = r.mask.to(c.scalar_type());
  return r;
}

// step_inputs on `device` against want_step_inputs: a decode step (T = 1) and a padded prefill
// (T = 5 from column 0, so rows with pad 3 and 6 have pad columns), K = 12 or 40.
void check_step_inputs(at::Device device, at::ScalarType dtype) {
  const std::vector<int64_t> pad{0, 3, 6};
  for (const std::vector<int64_t>& cols :
       {std::vector<int64_t>{9}, std::vector<int64_t>{0, 1, 2, 3, 4}}) {
    for (int64_t K : {12, 40}) {
      INFO("dtype " << c10::toString(dtype) << " T " << cols.size() << " K " << K);
      const auto opts = at::TensorOptions().dtype(dtype).device(device);
      const at::Tensor cos = at::randn({K, 128}, opts), sin = at::randn({K, 128}, opts);
      const auto ids = [&](const std::vector<int64_t>& v) {
        return at::tensor(v, at::kLong).to(device);
      };
      for (bool with_mask : {true, false}) {
        const auto got = kldq::kernels::step_inputs(ids(cols), ids(pad), cos, sin, K, with_mask);
        const auto want = want_step_inputs(cols, pad, cos, sin, K);
        CHECK(at::equal(got.cos.cpu(), want.cos));
        CHECK(at::equal(got.sin.cpu(), want.sin));
        CHECK(got.mask.defined() == with_mask);
        if (with_mask) CHECK(at::equal(got.mask.cpu(), want.mask));
      }
    }
  }
}

}  // namespace

TEST_CASE("a cache step's RoPE rows and mask follow their definition", "[kernels]") {
  for (auto dtype : {at::kFloat, at::kBFloat16}) check_step_inputs(at::kCPU, dtype);
}

TEST_CASE("a cache step's RoPE rows and mask on CUDA equal their definition", "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat}) check_step_inputs(at::kCUDA, dtype);
}

TEST_CASE("fused kernels match transformers' formulas on CUDA", "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(3);
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
    auto opts = at::TensorOptions().dtype(dtype).device(at::kCUDA);
    // h % 4 == 0 takes the vector loads; 170 the scalar path. In one row of 5120 (Qwen2.5-14B's
    // hidden size) some of the row's 512 threads take 3 vectors, in 3584 at most 2.
    for (int64_t h : {64, 170, 172, 1536, 3584, 5120}) {
      INFO("dtype " << c10::toString(dtype) << " h " << h);
      const at::Tensor x = at::randn({3, 37, h}, opts) * 2;
      const at::Tensor d = at::randn({3, 37, h}, opts);
      const at::Tensor w = 1 + at::randn({h}, opts) * 0.1;
      const at::Tensor want = hf_rms_norm(x, w, 1e-6);
      // The only freedom is the fp32 summation order of mean(x^2), which moves rstd by about an
      // ulp. In fp32 that shifts every output by up to ~3 ulps (rstd, then two products); in
      // 16-bit types the intermediate rounding absorbs it except at rounding boundaries.
      const bool wide = dtype == at::kFloat;
      CHECK(max_ulps(kldq::kernels::rms_norm(x, w, 1e-6), want) <= (wide ? 4.0 : 2.0));
      auto [sum, normed] = kldq::kernels::add_rms_norm(x, d, w, 1e-6);
      CHECK(at::equal(sum, x + d));
      CHECK(max_ulps(normed, hf_rms_norm(x + d, w, 1e-6)) <= (wide ? 4.0 : 2.0));
      if (!wide)
        CHECK(
            at::ne(kldq::kernels::rms_norm(x, w, 1e-6), want).to(at::kFloat).mean().item<double>() <
            0.02);
      // Real hidden sizes (multiples of 4 from 128 up) follow PyTorch's summation order exactly.
      if (h >= 128 && h % 4 == 0) {
        CHECK(at::equal(kldq::kernels::rms_norm(x, w, 1e-6), want));
        CHECK(at::equal(normed, hf_rms_norm(x + d, w, 1e-6)));
        const at::Tensor few = x.narrow(1, 0, 3);  // 9 rows: wider thread groups per row
        CHECK(at::equal(kldq::kernels::rms_norm(few, w, 1e-6), hf_rms_norm(few, w, 1e-6)));
        // One row, a batch-1 decode step: 512 threads per row.
        const at::Tensor one = x.narrow(0, 0, 1).narrow(1, 0, 1), d1 = d.narrow(0, 0, 1)[0][0];
        CHECK(at::equal(kldq::kernels::rms_norm(one, w, 1e-6), hf_rms_norm(one, w, 1e-6)));
        auto [sum1, normed1] = kldq::kernels::add_rms_norm(one, d1.view({1, 1, h}), w, 1e-6);
        CHECK(at::equal(sum1, one + d1));
        CHECK(at::equal(normed1, hf_rms_norm(one + d1, w, 1e-6)));
        // A base pointer off vector alignment takes the scalar loads: the same values.
        const at::Tensor buf = at::empty({x.numel() + 1}, opts);
        const at::Tensor off = buf.narrow(0, 1, x.numel()).view(x.sizes()).copy_(x);
        CHECK(at::equal(kldq::kernels::rms_norm(off, w, 1e-6), want));
      }
    }
    // RoPE on a strided view, as the decoder passes the q part of the fused qkv output: head
    // dims 16 and 128 take the vector path (d/2 a multiple of 16 bytes), 18 the scalar one.
    for (int64_t d : {16, 18, 128}) {
      INFO("rope d " << d);
      const at::Tensor qkv = at::randn({2, 19, 4 * d + 2 * 2 * d}, opts);
      const at::Tensor q = qkv.narrow(-1, 0, 4 * d).view({2, 19, 4, d});
      const at::Tensor k = qkv.narrow(-1, 4 * d, 2 * d).view({2, 19, 2, d});
      const at::Tensor ang = at::rand({19, d}, opts.dtype(at::kFloat)) * 6;
      const at::Tensor cos = ang.cos().to(dtype), sin = ang.sin().to(dtype);
      const at::Tensor got = kldq::kernels::rope(q, cos, sin);
      CHECK(got.is_contiguous());
      CHECK(at::equal(got, hf_rope(q, cos, sin)));
      CHECK(at::equal(kldq::kernels::rope(k, cos, sin), hf_rope(k, cos, sin)));
      // Per-row tables [B, T, d] (a KV cache's rows at their own positions).
      const at::Tensor ang2 = at::rand({2, 19, d}, opts.dtype(at::kFloat)) * 6;
      const at::Tensor cos2 = ang2.cos().to(dtype), sin2 = ang2.sin().to(dtype);
      CHECK(at::equal(kldq::kernels::rope(q, cos2, sin2), hf_rope(q, cos2, sin2)));
      // RoPE and the cache append in one pass: q rotated; k rotated and v copied into caches
      // [2, 2, 40, d] at columns 7..25, the rest of the caches untouched.
      const at::Tensor v = qkv.narrow(-1, 6 * d, 2 * d).view({2, 19, 2, d});
      const at::Tensor kc = at::randn({2, 2, 40, d}, opts), vc = at::randn({2, 2, 40, d}, opts);
      const at::Tensor kc0 = kc.clone(), vc0 = vc.clone();
      const at::Tensor cols = at::arange(7, 26, opts.dtype(at::kLong));
      const at::Tensor qr = kldq::kernels::rope_append(q, k, v, cos2, sin2, kc, vc, cols);
      CHECK(at::equal(qr, hf_rope(q, cos2, sin2)));
      CHECK(at::equal(kc.narrow(2, 7, 19), hf_rope(k, cos2, sin2).transpose(1, 2)));
      CHECK(at::equal(vc.narrow(2, 7, 19), v.transpose(1, 2)));
      for (const auto& [now, was] : {std::pair{kc, kc0}, std::pair{vc, vc0}}) {
        CHECK(at::equal(now.narrow(2, 0, 7), was.narrow(2, 0, 7)));
        CHECK(at::equal(now.narrow(2, 26, 14), was.narrow(2, 26, 14)));
      }
    }
    // SwiGLU on a fused gate|up output: widths 1024 and 8960 (vector path) and 172 (scalar for
    // 16-bit types), and more rows than the vector kernel's grid covers at once.
    for (auto [rows, width] : {std::pair<int64_t, int64_t>{35, 172}, {35, 8960}, {9000, 1024}}) {
      INFO("silu_mul rows " << rows << " width " << width);
      const at::Tensor gu = at::randn({rows, 2 * width}, opts) * 3;
      const at::Tensor want_act = at::silu(gu.narrow(-1, 0, width)) * gu.narrow(-1, width, width);
      CHECK(max_ulps(kldq::kernels::silu_mul(gu), want_act) <= (dtype == at::kFloat ? 4.0 : 0.0));
      // Separate gate and up outputs (packed layers): the same values.
      const at::Tensor gate = gu.narrow(-1, 0, width).contiguous();
      const at::Tensor up = gu.narrow(-1, width, width).contiguous();
      CHECK(max_ulps(kldq::kernels::silu_mul(gate, up), want_act) <=
            (dtype == at::kFloat ? 4.0 : 0.0));
    }
  }
}

TEST_CASE("fused kernels fall back to the reference composition on CPU", "[kernels]") {
  at::manual_seed(4);
  const at::Tensor x = at::randn({2, 5, 3, 8}, at::kFloat);
  const at::Tensor ang = at::rand({5, 8}, at::kFloat);
  const at::Tensor cos = ang.cos(), sin = ang.sin();
  // Hand-derived rotation for one pair: out[i] = x_i cos_i - x_{i+4} sin_i.
  const at::Tensor out = kldq::kernels::rope(x, cos, sin);
  const double want = x[1][2][0][1].item<double>() * cos[2][1].item<double>() -
                      x[1][2][0][5].item<double>() * sin[2][1].item<double>();
  CHECK(out[1][2][0][1].item<double>() == Approx(want).epsilon(1e-5));
  const at::Tensor gu = at::randn({4, 6}, at::kFloat);
  const double g = gu[2][1].item<double>(), u = gu[2][4].item<double>();
  CHECK(kldq::kernels::silu_mul(gu)[2][1].item<double>() ==
        Approx(g / (1 + std::exp(-g)) * u).epsilon(1e-5));
  CHECK(kldq::kernels::silu_mul(gu.narrow(1, 0, 3), gu.narrow(1, 3, 3))[2][1].item<double>() ==
        Approx(g / (1 + std::exp(-g)) * u).epsilon(1e-5));
  // rope_append: rotated q returned; rotated k and plain v at the cache columns 2..6.
  const at::Tensor kc = at::zeros({2, 3, 9, 8}), vc = at::zeros({2, 3, 9, 8});
  const at::Tensor qr =
      kldq::kernels::rope_append(x, x * 2, x * 3, cos, sin, kc, vc, at::arange(2, 7, at::kLong));
  CHECK(qr[1][2][0][1].item<double>() == Approx(want).epsilon(1e-5));
  CHECK(kc[1][0][4][1].item<double>() == Approx(2 * want).epsilon(1e-5));
  CHECK(vc[1][0][4][5].item<double>() == Approx(3 * x[1][2][0][5].item<double>()).epsilon(1e-6));
  CHECK(kc.narrow(2, 0, 2).abs().sum().item<double>() == 0);
  const at::Tensor w = at::rand({8}, at::kFloat);
  const at::Tensor row = x[0][0][0];
  const double rstd = 1.0 / std::sqrt(row.pow(2).mean().item<double>() + 1e-5);
  CHECK(kldq::kernels::rms_norm(x, w, 1e-5)[0][0][0][3].item<double>() ==
        Approx(row[3].item<double>() * rstd * w[3].item<double>()).epsilon(1e-5));
}
