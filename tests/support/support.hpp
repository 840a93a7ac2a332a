// Helpers shared by the tests: temporary directories, locating ../shared/data, running the
// kldq binary and the Python oracle, and a tiny synthesized checkpoint.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "kldq/quant/quantizer.hpp"

namespace kldq::test {

namespace fs = std::filesystem;

// A fresh directory removed when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

// ../shared/data/<rel> next to the source tree (or $KLDQ_SHARED_DATA/<rel>), if present.
std::optional<fs::path> shared_data(const std::string& rel);
// True under KLDQ_REQUIRE_DATA=1: KLDQ_SKIP fails instead of skipping (support/catch.hpp).
bool require_data();

struct CommandResult {
  int rc = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs a shell command line, capturing stdout and stderr.
CommandResult run_command(const std::string& command_line);
// Runs the kldq binary with `args` (already shell-quoted where needed).
CommandResult run_kldq(const std::string& args);

// The venv Python configured at build time, if it can import `modules` (space separated).
std::optional<std::string> python_with(const std::string& modules);

// A tiny random Qwen2 checkpoint (kldq synth --shape tiny) in fp32, made once per test run.
const fs::path& tiny_model();
// Every linear layer of `m` rounded to nearest in `base` (the quantized states of an RTN profile).
quant::QuantizedLayers rtn_layers(model::Decoder& m, const formats::FormatSpec& base);

void write_text(const fs::path& path, const std::string& text);
std::string read_text(const fs::path& path);

}  // namespace kldq::test
