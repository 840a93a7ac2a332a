// Seeded calibration windows from a corpus file, and their recorded identity.
#include "kldq/calib/calibration.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <limits>
#include <numeric>
#include <random>

#include "kldq/core/error.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/io/corpus.hpp"

namespace kldq::calib {

Calibration make_calibration(const CalibrationSpec& s, const io::Tokenizer& tok) {
  if (s.samples < 1 || s.seq_len < 2)
    throw ConfigError(fmt::format("calibration: need at least 1 sample of 2 tokens (got {} x {})",
                                  s.samples, s.seq_len));
  const std::vector<int32_t> tokens = tok.encode(io::read_corpus(s.file), false);
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < s.samples * s.seq_len)
    throw ConfigError(
        fmt::format("calibration file {} has {} tokens; {} samples x {} tokens need {}",
                    s.file.string(), n, s.samples, s.seq_len, s.samples * s.seq_len));
  std::vector<int64_t> slots(static_cast<size_t>(n / s.seq_len));
  std::iota(slots.begin(), slots.end(), 0);
  // Fisher-Yates with rng() % (i + 1): the bias of the modulo is below 2^-40 for these sizes,
  // and unlike std::uniform_int_distribution the result does not depend on the library.
  std::mt19937_64 rng(s.seed);
  for (size_t i = slots.size() - 1; i > 0; --i) std::swap(slots[i], slots[rng() % (i + 1)]);
  std::vector<int64_t> flat;
  flat.reserve(static_cast<size_t>(s.samples * s.seq_len));
  for (int64_t w = 0; w < s.samples; ++w) {
    const int64_t begin = slots[static_cast<size_t>(w)] * s.seq_len;
    flat.insert(flat.end(), tokens.begin() + begin, tokens.begin() + begin + s.seq_len);
  }
  Calibration c;
  c.ids = at::tensor(flat).view({s.samples, s.seq_len});
  c.identity = {s.file.string(), sha256_path(s.file), s.samples, s.seq_len, s.seed, n};
  return c;
}

nlohmann::json to_json(const CalibrationIdentity& c) {
  nlohmann::json j = {{"file", c.file},
                      {"sha256", c.sha256},
                      {"seed", c.seed},
                      {"samples", c.samples},
                      {"seq_len", c.seq_len}};
  if (c.file_tokens) j["file_tokens"] = *c.file_tokens;
  return j;
}

CalibrationIdentity calibration_from_json(const io::Doc& d) {
  d.keys({"file", "sha256", "samples", "seq_len", "seed", "file_tokens"});
  CalibrationIdentity c;
  c.file = d["file"].str();
  c.sha256 = d["sha256"].str();
  c.samples = d["samples"].integer(1, 1 << 24);
  c.seq_len = d["seq_len"].integer(2, 1 << 20);
  c.seed = d["seed"].unsigned_integer();
  if (d.has("file_tokens"))
    c.file_tokens = d["file_tokens"].integer(0, std::numeric_limits<int64_t>::max());
  return c;
}

}  // namespace kldq::calib
