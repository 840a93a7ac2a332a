// kldq entry point: parses the command line, dispatches to one subcommand, and maps errors to
// exit codes (0 ok, 1 runtime failure, 2 usage or configuration error).
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <iostream>
#include <system_error>

#include "common.hpp"
#include "kldq/build_config.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"

namespace {

// Runs the command; every exception becomes one line on stderr and an exit code.
int run_action(const kldq::cli::Action& action) {
  try {
    return action ? action() : kldq::kExitUsage;
  } catch (const kldq::Error& e) {
    kldq::log::error("{}", e.what());
    return e.exit_code();
  } catch (const c10::OutOfMemoryError& e) {
    kldq::log::error("{}", kldq::describe_out_of_memory(e.what_without_backtrace()));
    return kldq::kExitRuntime;
  } catch (const c10::Error& e) {
    // Bad input is refused by kldq's own checks before it reaches libtorch, so an error raised
    // inside libtorch is a kldq bug: said so, in one line (libtorch's messages continue with
    // context and C++ hints on later lines).
    const std::string what = e.what_without_backtrace();
    kldq::log::error(
        "internal error in libtorch (a bug in kldq; please report it with the "
        "command line): {}",
        what.substr(0, what.find('\n')));
    return kldq::kExitRuntime;
  } catch (const std::bad_alloc&) {
    kldq::log::error(
        "out of host memory; lower --batch, --seq-len or --samples, or use a machine with more "
        "RAM");
    return kldq::kExitRuntime;
  } catch (const std::system_error& e) {  // the OS refused (disk full, permissions): paths named
    kldq::log::error("{}", e.what());
    return kldq::kExitRuntime;
  } catch (const std::exception& e) {
    kldq::log::error("internal error (a bug in kldq; please report it with the command line): {}",
                     e.what());
    return kldq::kExitRuntime;
  } catch (...) {
    kldq::log::error("internal error: an unknown exception (a bug in kldq; please report it)");
    return kldq::kExitRuntime;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // First, before any thread exists: an interrupted command removes its partial outputs.
  kldq::install_cleanup_on_signals();
  // Same inputs, same thread count, same bits: MKL (libtorch's CPU BLAS) by default picks fewer
  // threads than asked when the machine is busy, which changes the summation order of a GEMM from
  // run to run (measured: GPTQ checkpoints differing between two runs at --threads 8 on 2 cores).
  // Read by MKL on its first call, so set before any; a user's own setting wins.
  ::setenv("MKL_DYNAMIC", "FALSE", /*overwrite=*/0);
  // The residency plan fills --max-gpu-memory with what a command holds; with fixed-size cached
  // segments, memory freed between a block's Hessians and its stacked problems stays split and
  // a later allocation fails below the cap (measured: a 14B GPTQ under 22 GiB failed at 20 GiB
  // allocated). Expandable segments map freed memory back into one range, so the cap is the
  // limit. Read when libtorch's CUDA allocator starts (first CUDA use); a user's setting wins.
  ::setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", /*overwrite=*/0);
  CLI::App app{"kldq: KLD-guided mixed-precision quantization experiments for LLMs"};
  app.require_subcommand(1);
  // -v/-q (options of kldq itself) are accepted after the subcommand too: a subcommand passes
  // options it does not know up to kldq.
  app.fallthrough();
  app.set_version_flag("--version", std::string("kldq ") + KLDQ_VERSION_STRING);
  bool verbose = false, quiet = false;
  app.add_flag("-v,--verbose", verbose, "more log output on stderr");
  app.add_flag("-q,--quiet", quiet, "only warnings and errors on stderr");

  kldq::cli::Action action;
  kldq::cli::register_inspect(app, action);
  kldq::cli::register_synth(app, action);
  kldq::cli::register_logits(app, action);
  kldq::cli::register_tokenize(app, action);
  kldq::cli::register_quantize(app, action);
  kldq::cli::register_export(app, action);
  kldq::cli::register_eval(app, action);
  kldq::cli::register_profile(app, action);
  kldq::cli::register_plan(app, action);
  kldq::cli::register_run(app, action);
  kldq::cli::register_report(app, action);
  kldq::cli::register_generate(app, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kldq::kExitUsage;
  }
  kldq::log::init(quiet     ? kldq::log::Level::QUIET
                  : verbose ? kldq::log::Level::VERBOSE
                            : kldq::log::Level::NORMAL);
  return run_action(action);
}
