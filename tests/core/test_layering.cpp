// The module layering holds: a module's sources and headers include only the kldq headers of
// modules it depends on in CMakeLists.txt (kldq_module(NAME ... DEPS kldq_X ...), transitively).
// Every module shares one include directory, so an upward #include would compile; this test is
// what refuses it (docs/ARCHITECTURE.md, "Modules").
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "support/catch.hpp"

namespace {

namespace fs = kldq::test::fs;

// Module -> its direct kldq dependencies, read from CMakeLists.txt.
std::map<std::string, std::set<std::string>> cmake_modules(const std::string& cmake) {
  std::map<std::string, std::set<std::string>> deps;
  const std::regex call(R"(kldq_module\((\w+)([^)]*)\))");
  const std::regex dep(R"(\bkldq_(\w+))");
  for (auto it = std::sregex_iterator(cmake.begin(), cmake.end(), call);
       it != std::sregex_iterator(); ++it) {
    const std::string args = (*it)[2];
    const auto at = args.find("DEPS");
    std::set<std::string>& d = deps[(*it)[1]];
    if (at == std::string::npos) continue;
    const std::string list = args.substr(at);
    for (auto m = std::sregex_iterator(list.begin(), list.end(), dep); m != std::sregex_iterator();
         ++m)
      d.insert((*m)[1]);
  }
  return deps;
}

std::set<std::string> closure(const std::map<std::string, std::set<std::string>>& deps,
                              const std::string& module) {
  std::set<std::string> out = {module};
  std::vector<std::string> todo = {module};
  while (!todo.empty()) {
    const std::string m = todo.back();
    todo.pop_back();
    const auto d = deps.find(m);
    if (d == deps.end()) continue;
    for (const std::string& x : d->second)
      if (out.insert(x).second) todo.push_back(x);
  }
  return out;
}

// (file, included module) for every `#include "kldq/MODULE/..."` under `dir`.
std::vector<std::pair<fs::path, std::string>> kldq_includes(const fs::path& dir) {
  std::vector<std::pair<fs::path, std::string>> out;
  const std::regex inc(R"(^\s*#\s*include\s*"kldq/(\w+)/)");
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream f(e.path());
    std::string line;
    std::smatch m;
    while (std::getline(f, line))
      if (std::regex_search(line, m, inc)) out.emplace_back(e.path(), m[1]);
  }
  return out;
}

}  // namespace

TEST_CASE("modules include only the modules they depend on in CMakeLists.txt", "[core]") {
  const fs::path root = KLDQ_SOURCE_DIR;
  const auto deps = cmake_modules(kldq::test::read_text(root / "CMakeLists.txt"));
  // The graph as documented: the test would pass vacuously if the CMake reading broke.
  REQUIRE(deps.size() >= 12);
  CHECK(deps.at("io") == std::set<std::string>{"core"});
  CHECK(closure(deps, "experiment").count("core"));
  CHECK_FALSE(closure(deps, "model").count("quant"));
  int checked = 0;
  for (const auto& [module, _] : deps) {
    const std::set<std::string> allowed = closure(deps, module);
    for (const fs::path& dir : {root / "src" / module, root / "include" / "kldq" / module}) {
      if (!fs::exists(dir)) continue;
      for (const auto& [file, used] : kldq_includes(dir)) {
        ++checked;
        INFO(fs::relative(file, root).string() << " includes kldq/" << used << "/ but module "
                                               << module << " does not depend on " << used);
        CHECK(allowed.count(used));
      }
    }
  }
  CHECK(checked > 300);
}
