// Test helpers: temp dirs, shared data lookup, subprocesses, the tiny model.
#include "support/support.hpp"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "kldq/core/fs.hpp"
#include "kldq/model/synth.hpp"

namespace kldq::test {

bool require_data() {
  const char* v = std::getenv("KLDQ_REQUIRE_DATA");
  return v && std::string(v) == "1";
}

TempDir::TempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  path_ = fs::temp_directory_path() /
          ("kldq-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  remove_tree(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  remove_tree(path_);
}

std::optional<fs::path> shared_data(const std::string& rel) {
  fs::path root;
  if (const char* env = std::getenv("KLDQ_SHARED_DATA"))
    root = env;
  else
    root = fs::path(KLDQ_SOURCE_DIR).parent_path() / "shared" / "data";
  const fs::path p = root / rel;
  if (fs::exists(p)) return p;
  return std::nullopt;
}

CommandResult run_command(const std::string& command_line) {
  TempDir tmp("cmd");
  const fs::path err_path = tmp / "stderr";
  const std::string full = command_line + " 2>" + err_path.string();
  CommandResult r;
  FILE* pipe = ::popen(full.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = read_text(err_path);
  return r;
}

CommandResult run_kldq(const std::string& args) {
  return run_command(std::string(KLDQ_BINARY) + " " + args);
}

std::optional<std::string> python_with(const std::string& modules) {
  const std::string py = KLDQ_PYTHON;
  if (py.empty()) return std::nullopt;
  std::string imports;
  std::istringstream in(modules);
  for (std::string m; in >> m;) imports += "import " + m + ";";
  const auto r = run_command(py + " -c '" + imports + "'");
  if (r.rc != 0) return std::nullopt;
  return py;
}

const fs::path& tiny_model() {
  static TempDir dir("tiny");
  static const fs::path model = [] {
    const fs::path p = dir / "tiny";
    model::SynthOptions o;
    o.seed = 7;
    o.dtype = c10::kFloat;
    model::synth_checkpoint(model::synth_config("tiny"), p, o);
    return p;
  }();
  return model;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

quant::QuantizedLayers rtn_layers(model::Decoder& m, const formats::FormatSpec& base) {
  model::LayerFormats formats;
  for (const auto& id : m.linear_ids()) formats[id.name()] = base;
  return quant::quantize_layers(m, formats, {});
}

}  // namespace kldq::test
