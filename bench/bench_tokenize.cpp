// Tokenizer throughput: load time of a tokenizer, then tokens per second encoding a text file
// as one string and line by line, single thread, each timed on a freshly loaded tokenizer (cold
// word cache). Prints one JSON line per measurement; bench/tokenize_peer.py measures the
// Hugging Face tokenizers library the same way.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kldq tokenizer benchmark"};
  std::string model, file;
  int repeats = 3;
  app.add_option("--model", model, "directory with tokenizer.json or tokenizer.model")->required();
  app.add_option("--file", file, "text file")->required();
  app.add_option("--repeats", repeats, "runs per measurement; the median is reported")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw kldq::ConfigError(file + ": cannot open");
    std::stringstream buf;
    buf << in.rdbuf();
    const std::string text = buf.str();
    std::vector<std::string> lines;
    for (std::istringstream ls(text); std::getline(ls, lines.emplace_back());) {
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::vector<double> load, whole, by_line;
    size_t tokens = 0, line_tokens = 0;
    for (int r = 0; r < repeats; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      auto tok = kldq::io::Tokenizer::load(model);
      load.push_back(seconds_since(t0));
      t0 = std::chrono::steady_clock::now();
      tokens = tok->encode(text).size();
      whole.push_back(seconds_since(t0));
      tok = kldq::io::Tokenizer::load(model);
      t0 = std::chrono::steady_clock::now();
      line_tokens = 0;
      for (const auto& l : lines) line_tokens += tok->encode(l).size();
      by_line.push_back(seconds_since(t0));
    }
    const auto emit = [&](const char* what, double s, size_t n) {
      std::cout << nlohmann::json{{"impl", "kldq"}, {"what", what},       {"s", s},
                                  {"tokens", n},    {"tok_per_s", n / s}, {"bytes", text.size()}}
                       .dump()
                << std::endl;
    };
    std::cout << nlohmann::json{{"impl", "kldq"}, {"what", "load"}, {"s", median(load)}}.dump()
              << std::endl;
    emit("encode_whole", median(whole), tokens);
    emit("encode_lines", median(by_line), line_tokens);
    return 0;
  } catch (const kldq::Error& e) {
    std::cerr << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
