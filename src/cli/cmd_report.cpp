// `kldq report RESULTS_DIR [--format md|csv|json] [-o DIR] [--no-plots]`: the summary table of
// a run directory (every shard's runs merged) on stdout and as summary.md/.csv/.json, and the
// plots, made by scripts/plot_results.py when a python3 with matplotlib is found.
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "common.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/experiment/results.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::cli {
namespace {

namespace fs = std::filesystem;

struct ReportOptions {
  std::string dir, format = "md", out;
  bool no_plots = false;
};

// The repository this binary was built in (build/kldq -> the parent of build/), where the plot
// script and the project's .venv live.
fs::path source_root() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path().parent_path();
}

std::string shell_quoted(const fs::path& p) {
  std::string q = "'";
  for (const char c : p.string()) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The python that draws the plots: $KLDQ_PYTHON, else the project's .venv (scripts/setup.sh
// installs matplotlib there), else python3 on PATH.
std::string find_python(const fs::path& root) {
  if (const char* env = std::getenv("KLDQ_PYTHON"); env && *env) return env;
  std::error_code ec;
  const fs::path venv = root / ".venv" / "bin" / "python";
  if (!root.empty() && fs::exists(venv, ec)) return venv.string();
  return "python3";
}

void plots(const fs::path& dir, const fs::path& out) {
  const fs::path root = source_root();
  const char* env = std::getenv("KLDQ_PLOT_SCRIPT");
  const fs::path script = env && *env ? fs::path(env) : root / "scripts" / "plot_results.py";
  std::error_code ec;
  if (!fs::is_regular_file(script, ec)) {
    log::warn("plots skipped: {} not found (set KLDQ_PLOT_SCRIPT)", script.string());
    return;
  }
  const std::string python = find_python(root);
  if (run_shell(shell_quoted(python) + " -c 'import matplotlib' >/dev/null 2>&1") != 0) {
    log::warn(
        "plots skipped: {} has no matplotlib. Install it (`{} -m pip install matplotlib`, or "
        "scripts/setup.sh, which puts it in .venv) or point KLDQ_PYTHON at a python that has it",
        python, python);
    return;
  }
  const std::string cmd = fmt::format("{} {} {} -o {} >&2", shell_quoted(python),
                                      shell_quoted(script), shell_quoted(dir), shell_quoted(out));
  if (run_shell(cmd) != 0)
    throw IoError(fmt::format("plots: {} failed (its message is above)", script.string()));
}

int run_report(const ReportOptions& o) {
  if (o.format != "md" && o.format != "csv" && o.format != "json")
    throw ConfigError(fmt::format("--format {}: expected md, csv or json", o.format));
  std::error_code ec;
  if (!fs::is_directory(o.dir, ec) || !fs::is_regular_file(fs::path(o.dir) / "manifest.json", ec))
    throw ConfigError(
        fmt::format("{}: not a results directory of kldq run (no manifest.json)", o.dir));
  const fs::path out = o.out.empty() ? fs::path(o.dir) / "report" : output_path(o.out, "-o");
  if (!o.out.empty()) check_not_input(out, "-o", {o.dir});
  const auto records = experiment::read_all_runs(o.dir);
  nlohmann::json j = {{"manifest", io::read_json_file(fs::path(o.dir) / "manifest.json")},
                      {"runs", records}};
  const std::string md = experiment::summary_markdown(records);
  const std::string csv = experiment::summary_csv(records);
  const std::string json = j.dump(2) + "\n";
  fs::create_directories(out, ec);
  if (ec) throw IoError(fmt::format("{}: cannot create ({})", out.string(), ec.message()));
  io::write_file_atomic(out / "summary.md", md);
  io::write_file_atomic(out / "summary.csv", csv);
  io::write_file_atomic(out / "summary.json", json);
  std::cout << (o.format == "md" ? md : o.format == "csv" ? csv : json) << std::flush;
  if (!o.no_plots) plots(fs::absolute(o.dir), out);
  log::info("{} runs; summary.md/.csv/.json{} in {}", records.size(),
            o.no_plots ? "" : " and plots", out.string());
  return 0;
}

}  // namespace

void register_report(CLI::App& app, Action& action) {
  auto opts = std::make_shared<ReportOptions>();
  auto* sub = app.add_subcommand("report", "tables and plots of a results directory");
  sub->add_option("RESULTS_DIR", opts->dir, "output directory of kldq run")->required();
  sub->add_option("--format", opts->format, "md, csv or json, on stdout")->capture_default_str();
  sub->add_option("-o,--output", opts->out, "where the tables and plots go (default DIR/report)");
  sub->add_flag("--no-plots", opts->no_plots, "tables only");
  sub->callback([&action, opts] { action = [opts] { return run_report(*opts); }; });
}

}  // namespace kldq::cli
