// Calibration sets (docs/PROTOCOLS.md, "Calibration"): N windows of T tokens drawn with a seed
// from a text or JSONL file, recorded by file hash, seed, N and T in every artifact (the
// calibration identity, defined once here: profiles, plans and method settings hold it).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "kldq/io/document.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"

namespace kldq::calib {

struct CalibrationSpec {
  std::filesystem::path file;
  int64_t samples = 128;  // N
  int64_t seq_len = 512;  // T
  uint64_t seed = 0;
};

// The windows' identity as artifacts record it ("calibration" of profile.json, of a plan's
// planner record and of method settings): the file, its SHA-256, N, T, the seed and the tokens
// the file holds.
struct CalibrationIdentity {
  std::string file, sha256;
  int64_t samples = 0;  // N
  int64_t seq_len = 0;  // T
  uint64_t seed = 0;
  std::optional<int64_t> file_tokens;  // always written; records may leave it out
  bool operator==(const CalibrationIdentity&) const = default;
};
// {"file", "sha256", "samples", "seq_len", "seed", "file_tokens" (when known)}.
nlohmann::json to_json(const CalibrationIdentity& c);
// A recorded identity read back: no other key, samples in [1, 2^24], seq_len in [2, 2^20] (as
// generous as any calibration set, N x T far from overflow), seed and file_tokens >= 0.
CalibrationIdentity calibration_from_json(const io::Doc& d);

struct Calibration {
  at::Tensor ids;  // [N, T] int64, CPU
  CalibrationIdentity identity;
};

// Tokenizes the whole file (without special tokens), cuts it into floor(n / T) non-overlapping
// windows and takes N of them in the order of a seeded Fisher-Yates shuffle (mt19937_64, whose
// sequence the C++ standard fixes, so a seed gives the same set on every platform).
// ConfigError when the file has fewer than N x T tokens, saying how many it has and needs.
Calibration make_calibration(const CalibrationSpec& spec, const io::Tokenizer& tokenizer);

}  // namespace kldq::calib
