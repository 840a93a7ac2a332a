// Loading a checkpoint whose tensors disagree with its config.json: missing, leftover, misshapen,
// wrongly typed and falsely tied tensors each give one error naming the tensor.
#include <ATen/ATen.h>

#include "kldq/core/error.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/model/decoder.hpp"
#include "support/catch.hpp"

namespace {

using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

// The tiny model's tensors, to be edited and written into a new checkpoint.
Tensors tiny_tensors() {
  const auto ck = kldq::io::Checkpoint::open(kldq::test::tiny_model());
  Tensors out;
  for (const auto& name : ck.names()) out.emplace_back(name, ck.tensor(name).clone());
  return out;
}

std::string load_error(const kldq::test::TempDir& dir, const Tensors& tensors) {
  kldq::test::fs::copy_file(kldq::test::tiny_model() / "config.json", dir / "config.json",
                            kldq::test::fs::copy_options::overwrite_existing);
  kldq::io::write_safetensors(dir / "model.safetensors", tensors);
  try {
    kldq::model::Decoder::load(dir.path(), c10::kCPU, c10::kFloat);
  } catch (const kldq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("checkpoint/config mismatches are reported by tensor name", "[model][errors]") {
  kldq::test::TempDir dir("ws");
  Tensors t = tiny_tensors();
  auto find = [&](const std::string& name) -> at::Tensor& {
    for (auto& [n, v] : t)
      if (n == name) return v;
    throw std::runtime_error("no " + name);
  };
  SECTION("unchanged copy loads") {
    CHECK(load_error(dir, t) == "(no error)");
  }
  SECTION("missing tensor") {
    std::erase_if(t, [](const auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; });
    CHECK_THAT(load_error(dir, t), HasText("missing tensor 'model.layers.1.mlp.up_proj.weight'"));
  }
  SECTION("leftover tensor") {
    t.emplace_back("model.layers.9.extra.weight", at::zeros({2}));
    CHECK_THAT(load_error(dir, t), HasText("not used") && HasText("model.layers.9.extra.weight"));
  }
  SECTION("wrong shape") {
    find("model.layers.0.self_attn.k_proj.weight") = at::zeros({31, 64});
    CHECK_THAT(
        load_error(dir, t),
        HasText("'model.layers.0.self_attn.k_proj.weight' has shape [31, 64], expected [32, 64]"));
  }
  SECTION("integer dtype where floats are needed") {
    find("model.norm.weight") = at::zeros({64}, at::kInt);
    CHECK_THAT(load_error(dir, t), HasText("model.norm.weight") && HasText("I32"));
  }
  SECTION("tied embeddings with a different lm_head") {
    t.emplace_back("lm_head.weight", at::zeros({512, 64}));
    CHECK_THAT(load_error(dir, t), HasText("tie_word_embeddings"));
  }
  SECTION("tied embeddings with an identical lm_head copy load") {
    t.emplace_back("lm_head.weight", find("model.embed_tokens.weight").clone());
    CHECK(load_error(dir, t) == "(no error)");
  }
}
