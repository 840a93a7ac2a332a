// safetensors: round trip through kldq's writer and reader, and every malformed-file class the
// reader must reject with an error naming the file and tensor (never a crash).
#include <ATen/ATen.h>

#include <cstring>

#include "kldq/core/error.hpp"
#include "kldq/io/safetensors.hpp"
#include "support/catch.hpp"

namespace {

using kldq::io::SafetensorsFile;

// Writes [u64 len][header][data bytes] by hand, so tests control every byte.
void write_raw(const kldq::test::fs::path& p, const std::string& header, size_t data_bytes,
               int64_t len_override = -1) {
  std::string bytes(8, '\0');
  const uint64_t len = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  std::memcpy(bytes.data(), &len, 8);
  bytes += header;
  bytes.append(data_bytes, '\x01');
  kldq::test::write_text(p, bytes);
}

std::string open_error(const kldq::test::fs::path& p) {
  try {
    SafetensorsFile::open(p);
  } catch (const kldq::IoError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("safetensors round trip keeps dtype, shape, values and metadata", "[io]") {
  kldq::test::TempDir dir("st");
  at::manual_seed(1);
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"a.bf16", at::randn({3, 5}).to(at::kBFloat16)},
      {"b.f16", at::randn({7}).to(at::kHalf)},
      {"c.f32", at::randn({2, 3, 4})},
      {"d.i8", at::randint(-128, 127, {9}, at::kChar)},
      {"e.u8", at::randint(0, 255, {4, 1}, at::kByte)},
      {"f.empty", at::empty({0, 3})},
  };
  kldq::io::write_safetensors(dir / "x.safetensors", tensors, {{"k", "v"}});
  const auto f = SafetensorsFile::open(dir / "x.safetensors");
  REQUIRE(f->tensors().size() == tensors.size());
  CHECK(f->metadata().at("k") == "v");
  for (const auto& [name, t] : tensors) {
    const at::Tensor got = f->tensor(name);
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(got.sizes() == t.sizes());
    CHECK(at::equal(got, t));
  }
  // Data starts 8-byte aligned (header padded), so views need no copy.
  CHECK(f->header_bytes() % 8 == 0);
  CHECK_THROWS_AS(f->tensor("missing"), kldq::IoError);
}

TEST_CASE("safetensors files written by the reference library are read", "[io]") {
  const auto py = kldq::test::python_with("safetensors numpy");
  if (!py) KLDQ_SKIP("no Python with safetensors");
  kldq::test::TempDir dir("st-py");
  const auto p = dir / "ref.safetensors";
  // Mixed dtypes and an empty tensor, which the reference writer places at the offset where the
  // next tensor starts.
  const std::string script =
      "import numpy as np; from safetensors.numpy import save_file; "
      "save_file({'w': np.arange(12, dtype=np.float32).reshape(3, 4), "
      "'i': np.array([5, -7], dtype=np.int64), 'a_empty': np.zeros((0, 3), dtype=np.float32), "
      "'h': np.array([1.5, -2.25, 65504.0], dtype=np.float16)}, '" +
      p.string() + "', metadata={'format': 'np'})";
  const auto r = kldq::test::run_command(*py + " -c \"" + script + "\"");
  REQUIRE(r.rc == 0);
  const auto f = SafetensorsFile::open(p);
  CHECK(at::equal(f->tensor("w"), at::arange(12, at::kFloat).view({3, 4})));
  CHECK(f->tensor("i")[1].item<int64_t>() == -7);
  CHECK(f->tensor("a_empty").sizes() == std::vector<int64_t>{0, 3});
  CHECK(at::equal(f->tensor("h").to(at::kFloat), at::tensor({1.5f, -2.25f, 65504.0f})));
}

TEST_CASE("malformed safetensors files are rejected with a clear error", "[io][errors]") {
  kldq::test::TempDir dir("st-bad");
  const auto p = dir / "bad.safetensors";
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";

  SECTION("truncated file") {
    kldq::test::write_text(p, "abc");
    CHECK_THAT(open_error(p), HasText("truncated"));
  }
  SECTION("header length past the end of the file") {
    write_raw(p, "{" + ok_entry + "}", 16, 1 << 20);
    CHECK_THAT(open_error(p), HasText("runs past the end"));
  }
  SECTION("header is not JSON") {
    write_raw(p, "{not json", 16);
    CHECK_THAT(open_error(p), HasText("not valid JSON"));
  }
  SECTION("overlapping spans") {
    write_raw(p, "{" + ok_entry + R"(,"v":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16);
    CHECK_THAT(open_error(p), HasText("overlap"));
  }
  SECTION("shape x dtype does not match the span") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}})", 16);
    CHECK_THAT(open_error(p), HasText("'w'") && HasText("needs 24 bytes"));
  }
  SECTION("unknown dtype") {
    write_raw(p, R"({"w":{"dtype":"F4X","shape":[4],"data_offsets":[0,16]}})", 16);
    CHECK_THAT(open_error(p), HasText("unsupported dtype 'F4X'"));
  }
  SECTION("span beyond the data section") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", 16);
    CHECK_THAT(open_error(p), HasText("out of bounds"));
  }
  SECTION("entry without data_offsets") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[4]}})", 16);
    CHECK_THAT(open_error(p), HasText("data_offsets"));
  }
  SECTION("negative shape") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", 16);
    CHECK_THAT(open_error(p), HasText("integers in [0, 2^48]"));
  }
  SECTION("zero-sized tensor whose strides would overflow") {
    write_raw(
        p,
        R"({"w":{"dtype":"F32","shape":[0,281474976710656,281474976710656],"data_offsets":[0,0]}})",
        0);
    CHECK_THAT(open_error(p), HasText("too large"));
  }
  SECTION("a hole between spans, or bytes after the last one") {
    write_raw(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16);
    CHECK_THAT(open_error(p), HasText("tensor 'w' starts at byte 8") && HasText("expected 0"));
    write_raw(p, "{" + ok_entry + "}", 17);
    CHECK_THAT(open_error(p), HasText("cover 16 bytes but the data section has 17"));
  }
  SECTION("a header length one byte short of a space-padded header") {
    // Parses as JSON without its last space, and would shift every tensor by one byte.
    const std::string header = "{" + ok_entry + "}   ";
    write_raw(p, header, 16, int64_t(header.size()) - 1);
    CHECK_THAT(open_error(p), HasText("cover 16 bytes but the data section has 17"));
  }
  SECTION("every message names the file") {
    write_raw(p, "[]", 0);
    CHECK_THAT(open_error(p), HasText(p.string()));
  }
}

TEST_CASE("an abandoned writer leaves no file behind", "[io]") {
  kldq::test::TempDir dir("st-w");
  {
    kldq::io::SafetensorsWriter w(dir / "x.safetensors", {{"a", at::kFloat, {2}}});
    w.write("a", at::zeros({2}));
  }  // no commit
  CHECK(kldq::test::fs::is_empty(dir.path()));
}
