// The decoder on CUDA against the CPU fp32 forward: fp32 logits agree closely, and bf16 moves
// the next-token distributions only by bf16 rounding noise.
#include <ATen/ATen.h>

#include "kldq/model/decoder.hpp"
#include "support/catch.hpp"

TEST_CASE("decoder on CUDA matches the CPU forward", "[cuda][model]") {
  KLDQ_SKIP_NO_CUDA();
  const auto cpu = kldq::model::Decoder::load(kldq::test::tiny_model(), c10::kCPU, c10::kFloat);
  const auto gpu32 = kldq::model::Decoder::load(kldq::test::tiny_model(), c10::kCUDA, c10::kFloat);
  const auto gpu16 =
      kldq::model::Decoder::load(kldq::test::tiny_model(), c10::kCUDA, c10::kBFloat16);
  at::InferenceMode guard;
  at::manual_seed(5);
  const at::Tensor ids = at::randint(512, {4, 96}, at::kLong);
  const at::Tensor ref = cpu.forward(ids);
  const at::Tensor got32 = gpu32.forward(ids).cpu();
  CHECK((got32 - ref).abs().max().item<double>() < 1e-4);
  const at::Tensor lp = at::log_softmax(ref, -1);
  const at::Tensor lq = at::log_softmax(gpu16.forward(ids).cpu().to(at::kFloat), -1);
  const double kl = (lp.exp() * (lp - lq)).sum(-1).mean().item<double>();
  INFO("bf16 vs fp32 KL " << kl);
  CHECK(kl >= 0.0);
  CHECK(kl < 1e-3);
}
