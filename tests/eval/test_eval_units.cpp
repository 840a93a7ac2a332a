// Evaluation building blocks against hand-derived values: SHA-256 test vectors, CSV parsing,
// Wilson intervals, and the windows of each perplexity protocol.
#include "kldq/core/hash.hpp"
#include "kldq/eval/loglik.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/eval/stats.hpp"
#include "kldq/io/csv.hpp"
#include "support/catch.hpp"

namespace eval = kldq::eval;

TEST_CASE("SHA-256 matches the FIPS 180-4 test vectors", "[core][hash]") {
  CHECK(kldq::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(kldq::sha256_hex("abc") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(kldq::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  kldq::Sha256 s;  // one million 'a', fed in uneven pieces
  const std::string piece(977, 'a');
  size_t left = 1000000;
  while (left > 0) {
    const size_t n = std::min(left, piece.size());
    s.update(piece.data(), n);
    left -= n;
  }
  CHECK(s.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  kldq::test::TempDir dir("hash");
  kldq::test::write_text(dir / "f.txt", "abc");
  CHECK(kldq::sha256_path(dir / "f.txt") == kldq::sha256_hex("abc"));
  const std::string before = kldq::sha256_path(dir.path());
  kldq::test::write_text(dir / "g.txt", "");
  CHECK(kldq::sha256_path(dir.path()) != before);
  CHECK_THROWS_WITH(kldq::sha256_path(dir / "missing"), HasText("missing: cannot open"));
}

TEST_CASE("CSV: quotes, doubled quotes, embedded newlines, CRLF, BOM, blank lines", "[io][csv]") {
  const auto rows = kldq::io::parse_csv(
      "\xEF\xBB\xBF"
      "a,\"b,c\",\"say \"\"x\"\"\"\r\n\r\n\"multi\nline\",,last\nend",
      "t.csv");
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].fields == std::vector<std::string>{"a", "b,c", "say \"x\""});
  CHECK(rows[0].line == 1);
  CHECK(rows[1].fields == std::vector<std::string>{"multi\nline", "", "last"});
  CHECK(rows[1].line == 3);
  CHECK(rows[2].fields == std::vector<std::string>{"end"});
  CHECK(rows[2].line == 5);
  CHECK_THROWS_WITH(kldq::io::parse_csv("a\nb,\"open", "t.csv"),
                    HasText("t.csv:2: quoted field not terminated"));
}

TEST_CASE("Wilson intervals equal hand-derived values", "[eval]") {
  // 0 of 10: upper = z^2/n / (1 + z^2/n) = 0.38415 / 1.38415.
  const auto [lo0, hi0] = eval::wilson_interval(0, 10);
  CHECK(lo0 == 0.0);
  CHECK(hi0 == Approx(0.38414588 / 1.38414588));
  const auto [lo, hi] = eval::wilson_interval(5, 10);  // symmetric about 0.5
  CHECK(lo == Approx(0.2366).margin(1e-4));
  CHECK(hi == Approx(0.7634).margin(1e-4));
  CHECK(eval::wilson_interval(0, 0) == std::pair<double, double>{0.0, 0.0});
}

TEST_CASE("perplexity protocols: windows and scored positions", "[eval]") {
  eval::PplOptions o;
  o.ctx = 4;
  auto w = eval::make_windows(10, o);  // gptq: [0,4) [4,8), all 3 predictions each
  REQUIRE(w.size() == 2);
  CHECK((w[1].begin == 4 && w[1].length == 4 && w[1].score_from == 0));
  o.protocol = eval::PplProtocol::LLAMACPP;
  w = eval::make_windows(10, o);  // second half: positions 2..2 predict token 3
  REQUIRE(w.size() == 2);
  CHECK(w[0].score_from == 2);
  o.protocol = eval::PplProtocol::SLIDING;
  for (int64_t n : {2, 5, 10, 11, 37}) {
    for (int64_t stride : {1, 2, 3}) {
      o.stride = stride;
      // Invariant (stride < ctx): every token 1..n-1 is predicted exactly once. At stride = ctx
      // the HF loop never predicts a window's first token, as non-overlapping windows do not.
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (const auto& x : eval::make_windows(n, o)) {
        CHECK(x.length <= o.ctx);
        for (int64_t p = x.score_from; p < x.length - 1; ++p) ++seen[x.begin + p + 1];
      }
      INFO("n " << n << " stride " << stride);
      CHECK(seen[0] == 0);
      CHECK(std::all_of(seen.begin() + 1, seen.end(), [](int c) { return c == 1; }));
    }
  }
  o.stride = 2;
  w = eval::make_windows(7, o);  // [0,4) all; [2,6) predicts 4,5; [4,7) predicts 6
  REQUIRE(w.size() == 3);
  CHECK((w[1].begin == 2 && w[1].score_from == 1));
  CHECK((w[2].begin == 4 && w[2].length == 3 && w[2].score_from == 1));
  CHECK_THROWS_WITH(
      eval::parse_ppl_protocol("wiki", "--ppl-protocol"),
      HasText("--ppl-protocol: unknown protocol 'wiki' (one of: gptq, llamacpp, sliding)"));
}

TEST_CASE("padded_width: CUDA batches of whole inputs round up to 64 columns, within the context",
          "[eval]") {
  using kldq::eval::padded_width;
  CHECK(padded_width(1000, 32768, true) == 1024);  // 15 x 64 = 960 < 1000 <= 16 x 64
  CHECK(padded_width(1024, 32768, true) == 1024);  // a multiple of 64 stays
  CHECK(padded_width(1, 32768, true) == 64);
  CHECK(padded_width(1000, 1010, true) == 1010);    // never past the context
  CHECK(padded_width(1000, 990, true) == 1000);     // nor below the input (the context check is
                                                    // the caller's)
  CHECK(padded_width(1000, 32768, false) == 1000);  // other devices: the longest input
}
