// Decoder invariants that need no external oracle: causality, independence of batch rows,
// running blocks in pieces, the fused q/k/v and gate/up GEMMs against separate layers, and
// cached block inputs left untouched.
#include <ATen/ATen.h>

#include "kldq/model/decoder.hpp"
#include "kldq/quant/quantizer.hpp"
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

TEST_CASE("layers sharing an input concatenate by rows; fused groups keep the logits", "[model]") {
  auto dec = Decoder::load(kldq::test::tiny_model(), c10::kCPU, c10::kFloat);
  at::InferenceMode guard;
  at::manual_seed(12);
  const auto nf4 = kldq::formats::FormatSpec::parse("nf4");
  const auto layers = kldq::test::rtn_layers(dec, nf4);
  // Oracle: the layers applied one by one (each group unfused) against the same layers applied
  // with apply_layers, which fuses q/k/v and gate/up and makes the members row views.
  Decoder separate = dec.share();
  for (const auto& [id, l] : layers) separate.quantize_layer(id, l.packed, l.input_scale);
  kldq::quant::apply_layers(dec, layers);
  const at::Tensor ids = at::randint(512, {2, 17}, at::kLong);
  CHECK(at::equal(dec.forward(ids), separate.forward(ids)));
  for (const LayerId id : dec.linear_ids())
    CHECK(at::equal(dec.linear(id).effective_weight(at::kFloat),
                    separate.linear(id).effective_weight(at::kFloat)));

  const QLinear& q = dec.linear({0, Proj::Q});
  const QLinear& k = dec.linear({0, Proj::K});
  const QLinear& v = dec.linear({0, Proj::V});
  const auto qkv = QLinear::concat({&q, &k, &v});
  REQUIRE(qkv.has_value());
  CHECK(qkv->out_features() == q.out_features() + 2 * k.out_features());
  const at::Tensor x = at::randn({3, q.in_features()});
  CHECK(at::allclose(qkv->forward(x), at::cat({q.forward(x), k.forward(x), v.forward(x)}, -1), 1e-5,
                     1e-6));
  CHECK(at::equal(qkv->rows(q.out_features(), k.out_features()).effective_weight(at::kFloat),
                  k.effective_weight(at::kFloat)));
  SECTION("members that disagree are not concatenated") {
    QLinear scaled = k;
    scaled.set_input_scale(at::full({k.in_features()}, 2.0));
    CHECK_FALSE(QLinear::concat({&q, &scaled}).has_value());  // input scales differ
    const at::Tensor w = k.effective_weight(at::kFloat);
    const QLinear dense(w, at::zeros({w.size(0)})), no_bias(w, at::Tensor());
    CHECK_FALSE(QLinear::concat({&q, &no_bias}).has_value());      // packed and dense
    CHECK_FALSE(QLinear::concat({&dense, &no_bias}).has_value());  // bias on one only
    CHECK(QLinear::concat({&no_bias, &no_bias}).has_value());
  }
}
