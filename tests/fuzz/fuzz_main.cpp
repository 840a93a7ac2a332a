// kldq_fuzz: a seeded mutation fuzzer over every parser of untrusted input (safetensors headers
// and files, config.json, tokenizer.json loading and encoding, the regex matcher, experiment
// YAML, plans, profiles, MMLU CSV/JSONL and corpora). Seeds are real files (the repository's
// model, data and configs, and ../shared/data when present) plus hand-made ones. An input passes
// when the parser accepts it or throws kldq::Error; anything else (another exception type, a
// crash, more than 10 s on one input) is a finding: the input is saved and the run fails.
//
//   kldq_fuzz [--seconds S] [--seed N] [--from I] [--out DIR] [--list] [TARGET...]  (default: all,
//   15 s each)
// Inputs come from a seeded generator; a run is time-bounded, so the input of a finding is saved
// (an exception's beside the report, a crash's by the signal handler as TARGET-crash in --out).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "kldq/core/fs.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <typeinfo>

#include "fuzz_targets.hpp"
#include "kldq/core/error.hpp"

namespace fs = std::filesystem;
using kldq::fuzz::Target;

namespace {

volatile sig_atomic_t g_iteration = 0;
const char* g_target = "";
// The input being run, written out by the fatal-signal handler (write(2) only: signal-safe).
const std::string* g_input = nullptr;
char g_input_path[4096] = "";

void on_fatal(int sig) {
  if (g_input && *g_input_path) {
    const int fd = ::open(g_input_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      (void)!::write(fd, g_input->data(), g_input->size());
      ::close(fd);
    }
  }
  char line[160];
  const int n = std::snprintf(line, sizeof line,
                              "\nkldq_fuzz: FINDING: signal %d (%s) in target %s at iteration %d "
                              "(input saved to %s)\n",
                              sig, sig == SIGALRM ? "hang over 10 s" : strsignal(sig), g_target,
                              int(g_iteration), g_input_path);
  if (n > 0) (void)!::write(2, line, size_t(n));
  ::signal(sig, SIG_DFL);
  ::raise(sig == SIGALRM ? SIGABRT : sig);
}

// One mutation of `s`: bit flips, byte changes, inserted or deleted runs, duplicated runs,
// interesting bytes and tokens, or a splice with another seed.
void mutate(std::string& s, std::mt19937_64& g, const std::vector<std::string>& seeds) {
  static const char* kTokens[] = {
      "{",    "}",     "[",    "]",       "\"",      ":",  ",",   "-1",
      "0",    "1e309", "null", "true",    "\\u0000", "\\", "(",   ")",
      "*",    "+",     "?",    "{99999}", "(?:",     "\n", "\r",  "\xff",
      "\xc3", "- ",    ": ",   "&a",      "*a",      "!!", "<<:", "9223372036854775807",
      "NaN"};
  auto pick = [&](size_t n) { return n ? size_t(g() % n) : 0; };
  switch (g() % 8) {
    case 0:
      if (!s.empty()) s[pick(s.size())] ^= char(1 << (g() % 8));
      break;
    case 1:
      if (!s.empty()) s[pick(s.size())] = char(g());
      break;
    case 2:
      s.insert(pick(s.size() + 1), kTokens[pick(std::size(kTokens))]);
      break;
    case 3:
      if (!s.empty()) {
        const size_t at = pick(s.size());
        s.erase(at, 1 + pick(std::min<size_t>(64, s.size() - at)));
      }
      break;
    case 4:
      if (!s.empty()) {
        const size_t at = pick(s.size()), len = 1 + pick(std::min<size_t>(256, s.size() - at));
        const std::string run = s.substr(at, len);
        const size_t times = 1 + pick(g() % 16 == 0 ? 4096 : 8);
        std::string rep;
        for (size_t i = 0; i < times; ++i) rep += run;
        s.insert(pick(s.size() + 1), rep);
      }
      break;
    case 5:
      s.insert(pick(s.size() + 1), std::string(1 + pick(8), char(g())));
      break;
    case 6: {
      const std::string& other = seeds[pick(seeds.size())];
      if (!other.empty() && !s.empty()) {
        const size_t a = pick(s.size()), b = pick(other.size());
        s = s.substr(0, a) + other.substr(b, pick(other.size() - b + 1));
      }
      break;
    }
    default:
      if (s.size() > 1) s.resize(pick(s.size()));
      break;
  }
}

// Inputs are cut at 2 MiB: the largest seed (a tokenizer.json) is 267 KB, and a bigger input
// only makes every run slower, not the search wider.
constexpr size_t kMaxInput = size_t(2) << 20;

struct Stats {
  uint64_t runs = 0, accepted = 0, errors = 0, findings = 0;
  double seconds = 0;
};

// Inputs before iteration `from` are generated (the sequence is one seeded stream) but not run,
// so a finding at iteration N replays in seconds with --from N.
Stats run_target(const Target& t, double seconds, uint64_t seed, uint64_t from,
                 const fs::path& out) {
  Stats st;
  std::mt19937_64 g(seed);
  const auto t0 = std::chrono::steady_clock::now();
  g_target = t.name.c_str();
  const std::string crash = (out / (t.name + "-crash")).string();
  std::snprintf(g_input_path, sizeof g_input_path, "%s", crash.c_str());
  for (;;) {
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (st.seconds >= seconds) break;
    // Every 16th input is a seed as is; the others get 1-8 stacked mutations.
    std::string in = t.seeds[size_t(g() % t.seeds.size())];
    if (st.runs % 16 != 0)
      for (int m = 1 + int(g() % 8); m > 0; --m) mutate(in, g, t.seeds);
    if (in.size() > kMaxInput) in.resize(kMaxInput);
    if (st.runs < from) {
      ++st.runs;
      continue;
    }
    g_iteration = int(st.runs);
    g_input = &in;
    ::alarm(10);
    try {
      t.run(in);
      ++st.accepted;
    } catch (const kldq::Error&) {
      ++st.errors;  // a clean refusal
    } catch (const std::exception& e) {
      ++st.findings;
      const fs::path f = out / (t.name + "-finding-" + std::to_string(st.findings));
      std::ofstream(f, std::ios::binary) << in;
      std::cerr << "kldq_fuzz: FINDING in " << t.name << ": " << typeid(e).name() << ": "
                << std::string(e.what()).substr(0, 300) << " (input saved to " << f.string()
                << ")\n";
    }
    ::alarm(0);
    g_input = nullptr;
    ++st.runs;
  }
  return st;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 15;
  uint64_t seed = 1, from = 0;
  fs::path out = fs::temp_directory_path() / "kldq-fuzz";
  std::vector<std::string> only;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc)
      seconds = std::stod(argv[++i]);
    else if (a == "--seed" && i + 1 < argc)
      seed = std::stoull(argv[++i]);
    else if (a == "--from" && i + 1 < argc)
      from = std::stoull(argv[++i]);
    else if (a == "--out" && i + 1 < argc)
      out = argv[++i];
    else if (a == "--list")
      list = true;
    else
      only.push_back(a);
  }
  for (int s : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGALRM}) ::signal(s, on_fatal);
  fs::create_directories(out);
  // One work directory per process: scripts/sanitize.sh runs the targets side by side.
  const fs::path work = out / ("work-" + std::to_string(::getpid()));
  const std::vector<Target> targets = kldq::fuzz::all_targets(work);
  for (const std::string& name : only)
    if (std::none_of(targets.begin(), targets.end(),
                     [&](const Target& t) { return t.name == name; })) {
      std::fprintf(stderr, "kldq_fuzz: no target %s (--list names them)\n", name.c_str());
      kldq::remove_tree(work);
      return 2;
    }
  if (list) {
    for (const Target& t : targets) std::printf("%s\n", t.name.c_str());
    kldq::remove_tree(work);
    return 0;
  }
  uint64_t findings = 0;
  std::printf("%-12s %10s %10s %10s %10s %9s\n", "target", "runs", "runs/s", "accepted", "refused",
              "findings");
  for (const Target& t : targets) {
    if (!only.empty() && std::find(only.begin(), only.end(), t.name) == only.end()) continue;
    const Stats st = run_target(t, seconds, seed, from, out);
    findings += st.findings;
    std::printf("%-12s %10llu %10.0f %10llu %10llu %9llu\n", t.name.c_str(),
                (unsigned long long)st.runs, double(st.runs) / st.seconds,
                (unsigned long long)st.accepted, (unsigned long long)st.errors,
                (unsigned long long)st.findings);
    std::fflush(stdout);
  }
  kldq::remove_tree(work);
  return findings == 0 ? 0 : 1;
}
