// Per-token KL (kernels::token_kl) against a float64 ATen computation of the same logits: KL,
// both NLLs and top-1 agreement, on the CPU path and the fused CUDA kernel (vector and scalar
// loads, fp32/fp16/bf16 logits), including near-identical rows where fp32 log-probabilities lose
// most digits, tied maxima, masked (-inf) logits, and identical rows (exactly 0).
#include <ATen/ATen.h>

#include "kldq/kernels/kl.hpp"
#include "support/catch.hpp"

namespace {

void check_against_float64(const at::Tensor& q, const at::Tensor& r, double rel) {
  const int64_t n = q.size(0);
  const at::Tensor target = at::randint(q.size(1), {n}, at::TensorOptions().dtype(at::kLong));
  const auto got = kldq::kernels::token_kl(q, r, target.to(q.device()));
  const at::Tensor lq = at::log_softmax(q.cpu().to(at::kDouble), -1);
  const at::Tensor lr = at::log_softmax(r.cpu().to(at::kDouble), -1);
  // Masked (-inf) logits of both contribute 0, not 0 * (-inf - -inf).
  const at::Tensor kl = at::where(lr.isinf(), at::zeros_like(lr), lr.exp() * (lr - lq)).sum(-1);
  const at::Tensor nll = -lq.gather(1, target.view({-1, 1})).squeeze(1);
  const at::Tensor nll_ref = -lr.gather(1, target.view({-1, 1})).squeeze(1);
  const at::Tensor same = (lq.argmax(-1) == lr.argmax(-1)).to(at::kByte);
  const at::Tensor gk = got.kl.cpu().to(at::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    INFO("row " << i << " dtype " << q.scalar_type() << " V " << q.size(1));
    // Absolute floor: fp32 log-softmax (CPU path) carries about 1e-6 per token.
    CHECK(gk[i].item<double>() == Approx(kl[i].item<double>()).epsilon(rel).margin(2e-6));
    CHECK(got.nll.cpu().to(at::kDouble)[i].item<double>() ==
          Approx(nll[i].item<double>()).epsilon(1e-5));
    CHECK(got.nll_ref.cpu().to(at::kDouble)[i].item<double>() ==
          Approx(nll_ref[i].item<double>()).epsilon(1e-5));
    CHECK(got.same_top1.cpu()[i].item<uint8_t>() == same[i].item<uint8_t>());
  }
}

void run_cases(c10::Device device) {
  at::manual_seed(7);
  for (const int64_t vocab : {int64_t{151936}, int64_t{1001}}) {
    for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      auto opts = at::TensorOptions().dtype(at::kFloat);
      const at::Tensor r = at::randn({6, vocab}, opts) * 3;
      // Rows 0-2 differ a lot; rows 3-5 only slightly (KL around 1e-4).
      const at::Tensor noise = at::randn({6, vocab}, opts);
      noise.narrow(0, 3, 3).mul_(0.01);
      const at::Tensor q = r + noise;
      // Row 0: tied maxima at 5 and 9 in both (the first index wins); row 1: masked logits.
      // Rows 2 and 4: ties within one 16-byte vector (1, 3) and in one CUDA thread's first and
      // second vectors (5, 5 + 256 vectors), where the kernel's per-vector maximum decides.
      const int64_t later = 5 + 256 * (16 / static_cast<int64_t>(c10::elementSize(dtype)));
      for (const at::Tensor& t : {q, r}) {
        t[0][5] = 100.0, t[0][9] = 100.0;
        t[1].narrow(0, 0, 10).fill_(-INFINITY);
        t[2][1] = 100.0, t[2][3] = 100.0;
        if (later < vocab) t[4][5] = 100.0, t[4][later] = 100.0;
      }
      check_against_float64(q.to(dtype).to(device), r.to(dtype).to(device),
                            device.is_cuda() ? 1e-5 : 1e-3);
      // A base pointer off 16-byte alignment takes the scalar-load path.
      const auto shifted = [&](const at::Tensor& t) {
        at::Tensor buf = at::empty({t.numel() + 1}, t.options().dtype(dtype).device(device));
        return buf.narrow(0, 1, t.numel()).view(t.sizes()).copy_(t.to(dtype));
      };
      check_against_float64(shifted(q), shifted(r), device.is_cuda() ? 1e-5 : 1e-3);
      const at::Tensor same = r.to(dtype).to(device);
      const auto zero = kldq::kernels::token_kl(same, same, at::zeros({6}, at::kLong).to(device));
      // Identical rows: exactly 0 from the kernel (every term is p * 0); the CPU path's
      // log-softmaxes are equal too, so its terms vanish as well.
      CHECK(zero.kl.abs().max().item<double>() == 0.0);
      CHECK(zero.same_top1.all().item<bool>());
    }
  }
}

}  // namespace

TEST_CASE("token KL on the CPU equals a float64 computation", "[kernels][kl]") {
  run_cases(c10::Device(c10::kCPU));
}

TEST_CASE("fused token KL kernel equals a float64 computation", "[kernels][kl][cuda]") {
  KLDQ_SKIP_NO_CUDA();
  run_cases(c10::Device(c10::kCUDA, 0));
}
