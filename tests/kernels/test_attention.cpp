// A decode step's attention over a masked KV cache on CUDA (kernels/attention.hpp) against a
// float64 softmax of the same bf16/fp16 operands: left-padded rows, columns past the step,
// several query heads per kv head, chunks of columns all masked; masked cache columns hold NaN,
// which must never reach the output.
#include <ATen/ATen.h>

#include <limits>

#include "kldq/kernels/attention.hpp"
#include "support/catch.hpp"

namespace {

// softmax(q k^T / sqrt(d) + mask) v in float64: q [B, nq, 1, d], k, v [B, nkv, C, d], mask [B, 1,
// 1, C] -> [B, 1, nq d]; query head h reads kv head h / (nq / nkv). Masked columns are dropped
// (their NaN values would otherwise poison the sums).
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask) {
  const int64_t B = q.size(0), nq = q.size(1), d = q.size(3), nkv = k.size(1);
  const at::Tensor visible = mask.cpu().to(at::kDouble).view({B, -1}).isfinite();  // [B, C]
  at::Tensor out = at::zeros({B, nq, d}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor cols = visible[b].nonzero().squeeze(1);
    for (int64_t h = 0; h < nq; ++h) {
      const int64_t kh = h / (nq / nkv);
      const at::Tensor kk = k[b][kh].cpu().to(at::kDouble).index_select(0, cols);  // [n, d]
      const at::Tensor vv = v[b][kh].cpu().to(at::kDouble).index_select(0, cols);
      const at::Tensor s = at::matmul(kk, q[b][h][0].cpu().to(at::kDouble)) / std::sqrt(double(d));
      out[b][h] = at::matmul(at::softmax(s, 0), vv);
    }
  }
  return out.view({B, 1, nq * d});
}

}  // namespace

TEST_CASE("decode attention on CUDA equals a float64 softmax over the unmasked columns",
          "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  at::manual_seed(21);
  const double inf = std::numeric_limits<double>::infinity();
  struct Shape {
    int64_t nq, nkv, d, C;
  };
  // 28/4 (Qwen2.5-7B's groups of 7), 8 per kv head, one per kv head; 200 columns: 4 chunks, the
  // last partial; 384: the speed protocol's cache.
  for (const Shape& sh : {Shape{28, 4, 128, 200}, Shape{16, 2, 64, 384}, Shape{4, 4, 128, 70},
                          Shape{12, 2, 128, 384}}) {
    for (auto dtype : {at::kBFloat16, at::kHalf}) {
      INFO("nq " << sh.nq << " nkv " << sh.nkv << " d " << sh.d << " C " << sh.C << " "
                 << c10::toString(dtype));
      const auto opts = at::TensorOptions().device(c10::kCUDA).dtype(dtype);
      const int64_t B = 3;
      // Row b sees columns [pad_b, col_b]: left pads 0, 5 and 70 (the last row's first chunk
      // is all masked), the step at column C - 1, C / 2 and 71.
      const std::vector<std::pair<int64_t, int64_t>> seen = {
          {0, sh.C - 1}, {5, sh.C / 2}, {std::min<int64_t>(70, sh.C - 2), sh.C - 1}};
      at::Tensor mask = at::full({B, 1, 1, sh.C}, -inf, at::kDouble);
      for (int64_t b = 0; b < B; ++b)
        mask[b].narrow(-1, seen[b].first, seen[b].second - seen[b].first + 1).fill_(0.0);
      mask = mask.to(opts);
      const at::Tensor masked = mask.isinf().view({B, 1, sh.C, 1});
      const at::Tensor k = (at::randn({B, sh.nkv, sh.C, sh.d}, opts) * 2).masked_fill(masked, NAN);
      const at::Tensor v = at::randn({B, sh.nkv, sh.C, sh.d}, opts).masked_fill(masked, NAN);
      const at::Tensor q = at::randn({B, 1, sh.nq, sh.d}, opts).transpose(1, 2);  // as a step's
      REQUIRE(kldq::kernels::decode_attention_applies(q, k, v, mask));
      const at::Tensor got = kldq::kernels::decode_attention(q, k, v, mask).cpu().to(at::kDouble);
      const at::Tensor want = reference(q, k, v, mask);
      REQUIRE(got.sizes() == want.sizes());
      CHECK(got.isfinite().all().item<bool>());
      // One rounding of the output plus fp32 sums over at most C terms of |v| <= ~5.
      const double rel = dtype == at::kBFloat16 ? 0x1p-8 : 0x1p-11;
      const at::Tensor err = (got - want).abs() - want.abs() * rel;
      INFO("worst excess " << err.max().item<double>());
      CHECK(err.max().item<double>() <= 1e-4);
    }
  }
}

TEST_CASE("decode attention refuses what its kernels do not take", "[cuda][kernels]") {
  KLDQ_SKIP_NO_CUDA();
  const auto opts = at::TensorOptions().device(c10::kCUDA).dtype(at::kBFloat16);
  const at::Tensor k = at::zeros({1, 2, 64, 128}, opts), mask = at::zeros({1, 1, 1, 64}, opts);
  const at::Tensor q = at::zeros({1, 1, 16, 128}, opts).transpose(1, 2);
  CHECK(kldq::kernels::decode_attention_applies(q, k, k, mask));
  // 9 query heads per kv head, two tokens, fp32, head size 96, a mask of another shape.
  CHECK_FALSE(kldq::kernels::decode_attention_applies(
      at::zeros({1, 1, 18, 128}, opts).transpose(1, 2), k, k, mask));
  CHECK_FALSE(kldq::kernels::decode_attention_applies(
      at::zeros({1, 2, 16, 128}, opts).transpose(1, 2), k, k, mask));
  CHECK_FALSE(kldq::kernels::decode_attention_applies(q.to(at::kFloat), k.to(at::kFloat),
                                                      k.to(at::kFloat), mask.to(at::kFloat)));
  const at::Tensor k96 = at::zeros({1, 2, 64, 96}, opts);
  CHECK_FALSE(kldq::kernels::decode_attention_applies(
      at::zeros({1, 1, 16, 96}, opts).transpose(1, 2), k96, k96, mask));
  CHECK_FALSE(kldq::kernels::decode_attention_applies(q, k, k, at::zeros({1, 1, 64}, opts)));
  CHECK_THROWS(kldq::kernels::decode_attention(q, k, k, at::zeros({1, 1, 64}, opts)));
}
