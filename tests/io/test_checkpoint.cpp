// Checkpoint directories: shard index resolution, paths escaping the directory, pickle refusal.
#include <ATen/ATen.h>

#include "kldq/core/error.hpp"
#include "kldq/io/checkpoint.hpp"
#include "support/catch.hpp"

namespace {

std::string open_error(const kldq::test::fs::path& dir) {
  try {
    kldq::io::Checkpoint::open(dir);
  } catch (const kldq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("sharded checkpoints resolve every tensor through the index", "[io]") {
  kldq::test::TempDir dir("ck");
  kldq::io::write_safetensors(dir / "a.safetensors", {{"x", at::ones({2})}, {"y", at::zeros({3})}});
  kldq::io::write_safetensors(dir / "b.safetensors", {{"z", at::full({1}, 7.0)}});
  kldq::test::write_text(
      dir / "model.safetensors.index.json",
      R"({"metadata":{},"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})");
  const auto ck = kldq::io::Checkpoint::open(dir.path());
  CHECK(ck.names() == std::vector<std::string>{"x", "y", "z"});
  CHECK(ck.tensor("z").item<float>() == 7.0f);
  CHECK_THROWS_WITH(ck.tensor("w"), HasText("missing tensor 'w'"));
}

TEST_CASE("Hugging Face cache layout (shards linked into ../../blobs) loads", "[io]") {
  kldq::test::TempDir cache("ck-cache");
  const auto blobs = cache / "blobs";
  const auto snap = cache / "snapshots" / "abc123";
  kldq::test::fs::create_directories(blobs);
  kldq::test::fs::create_directories(snap);
  kldq::io::write_safetensors(blobs / "f00d", {{"x", at::full({2}, 3.0)}});
  kldq::test::fs::create_symlink("../../blobs/f00d", snap / "model-00001-of-00001.safetensors");
  kldq::test::write_text(snap / "model.safetensors.index.json",
                         R"({"weight_map":{"x":"model-00001-of-00001.safetensors"}})");
  CHECK(kldq::io::Checkpoint::open(snap).tensor("x")[1].item<float>() == 3.0f);
}

TEST_CASE("bad checkpoint directories give clear errors", "[io][errors]") {
  kldq::test::TempDir dir("ck-bad");
  SECTION("index path with ..") {
    kldq::test::write_text(dir / "model.safetensors.index.json",
                           R"({"weight_map":{"x":"../evil.safetensors"}})");
    CHECK_THAT(open_error(dir.path()), HasText("escapes the checkpoint directory"));
  }
  SECTION("absolute index path") {
    kldq::test::write_text(dir / "model.safetensors.index.json",
                           R"({"weight_map":{"x":"/etc/passwd"}})");
    CHECK_THAT(open_error(dir.path()), HasText("escapes"));
  }
  SECTION("tensor listed in the index but absent from its shard") {
    kldq::io::write_safetensors(dir / "a.safetensors", {{"x", at::ones({1})}});
    kldq::test::write_text(dir / "model.safetensors.index.json",
                           R"({"weight_map":{"x":"a.safetensors","q":"a.safetensors"}})");
    CHECK_THAT(open_error(dir.path()), HasText("'q'"));
  }
  SECTION("pickle checkpoint") {
    kldq::test::write_text(dir / "pytorch_model.bin", "PK");
    try {
      kldq::io::Checkpoint::open(dir.path());
      FAIL("expected an error");
    } catch (const kldq::UnsupportedError& e) {
      CHECK_THAT(std::string(e.what()), HasText("pickle") && HasText("pytorch_model.bin"));
      CHECK(e.exit_code() == 2);
    }
  }
  SECTION("no weights at all") {
    CHECK_THAT(open_error(dir.path()), HasText("no *.safetensors"));
  }
  SECTION("not a directory") {
    CHECK_THAT(open_error(dir / "nope"), HasText("not a checkpoint directory"));
  }
}
