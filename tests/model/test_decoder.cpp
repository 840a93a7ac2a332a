// Decoder invariants that need no external oracle: causality, independence of batch rows,
// running blocks in pieces, the fused q/k/v and gate/up GEMMs against separate layers, and
// cached block inputs left untouched.
#include <ATen/ATen.h>

#include "kldq/model/decoder.hpp"
#include "support/catch.hpp"

using kldq::model::Decoder;
using kldq::model::LayerId;
using kldq::model::Proj;
using kldq::model::QLinear;

TEST_CASE("decoder invariants", "[model]") {
  auto dec = Decoder::load(kldq::test::tiny_model(), c10::kCPU, c10::kFloat);
  at::InferenceMode guard;
  at::manual_seed(11);
  const at::Tensor ids = at::randint(512, {3, 33}, at::kLong);
  const at::Tensor logits = dec.forward(ids);
  REQUIRE(logits.sizes() == std::vector<int64_t>{3, 33, 512});

  SECTION("causal: changing token t leaves positions < t unchanged") {
    at::Tensor ids2 = ids.clone();
    ids2[1][20] = (ids2[1][20].item<int64_t>() + 1) % 512;
    const at::Tensor l2 = dec.forward(ids2);
    CHECK(at::allclose(l2.narrow(1, 0, 20), logits.narrow(1, 0, 20), 1e-5, 1e-6));
    CHECK_FALSE(at::allclose(l2.narrow(1, 20, 13), logits.narrow(1, 20, 13), 1e-5, 1e-6));
  }
  SECTION("batch rows are independent") {
    for (int64_t b = 0; b < 3; ++b)
      CHECK(at::allclose(dec.forward(ids.narrow(0, b, 1)), logits.narrow(0, b, 1), 1e-5, 1e-5));
  }
  SECTION("blocks run in pieces equal the whole; inputs are not modified") {
    const at::Tensor h0 = dec.embed(ids);
    const at::Tensor h0_copy = h0.clone();
    const at::Tensor h1 = dec.run_blocks(0, 1, h0);
    CHECK(at::equal(h0, h0_copy));
    CHECK(at::allclose(dec.head(dec.run_blocks(1, 2, h1)), logits, 1e-6, 1e-6));
  }
  SECTION("replacing layers with equal separate copies (unfused path) keeps the logits") {
    for (const LayerId id : dec.linear_ids()) {
      const QLinear& l = dec.linear(id);
      dec.set_linear(id,
                     QLinear(l.weight().clone(), l.has_bias() ? l.bias().clone() : at::Tensor()));
    }
    CHECK(at::allclose(dec.forward(ids), logits, 1e-5, 1e-5));
  }
  SECTION("a replaced layer takes effect") {
    const LayerId id{1, Proj::DOWN};
    dec.set_linear(id, QLinear(at::zeros_like(dec.linear(id).weight()), at::Tensor()));
    CHECK_FALSE(at::allclose(dec.forward(ids), logits, 1e-3, 1e-3));
  }
  SECTION("every layer is addressable by its HF name") {
    CHECK(dec.linear_ids().size() == 14);
    CHECK(dec.linear(*LayerId::parse("model.layers.1.self_attn.k_proj")).out_features() == 32);
  }
}
