// Calibration sets (docs/PROTOCOLS.md, "Calibration"): N windows of T tokens drawn with a seed
// from a text or JSONL file, recorded by file hash, seed, N and T in every artifact.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>

#include "kldq/io/tokenizer/tokenizer.hpp"

namespace kldq::calib {

struct CalibrationSpec {
  std::filesystem::path file;
  int64_t samples = 128;  // N
  int64_t seq_len = 512;  // T
  uint64_t seed = 0;
};

struct Calibration {
  at::Tensor ids;           // [N, T] int64, CPU
  nlohmann::json identity;  // {"file", "sha256", "seed", "samples", "seq_len", "file_tokens"}
};

// Tokenizes the whole file (without special tokens), cuts it into floor(n / T) non-overlapping
// windows and takes N of them in the order of a seeded Fisher-Yates shuffle (mt19937_64, whose
// sequence the C++ standard fixes, so a seed gives the same set on every platform).
// ConfigError when the file has fewer than N x T tokens, saying how many it has and needs.
Calibration make_calibration(const CalibrationSpec& spec, const io::Tokenizer& tokenizer);

}  // namespace kldq::calib
