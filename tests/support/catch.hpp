// Test-support header: one spelling of Catch2 for the suite, whether Catch2 2.13 (Debian) or 3.x
// (GPU machine) is installed, plus KLDQ_SKIP for tests whose data or Python oracle is absent and
// KLDQ_SKIP_NO_CUDA for tests that need a GPU.
#pragma once

#include <ATen/Context.h>

#include <string>

#if KLDQ_CATCH_MAJOR >= 3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
// A skipped test is reported as skipped, not passed.
#define KLDQ_SKIP_IMPL(msg) SKIP(msg)
// Substring matcher for CHECK_THAT on strings.
inline auto HasText(const std::string& s) {
  return Catch::Matchers::ContainsSubstring(s);
}
#else
#include <catch2/catch.hpp>
inline auto HasText(const std::string& s) {
  return Catch::Matchers::Contains(s);
}
// Catch2 2.x has no SKIP: the message is printed as a warning and the test returns.
#define KLDQ_SKIP_IMPL(msg) \
  do {                      \
    WARN(msg);              \
    return;                 \
  } while (0)
#endif

// Under KLDQ_REQUIRE_DATA=1 (.ci/run sets it: CI has ../shared/data and the venv) a missing input
// fails the test instead, so a suite cannot pass with tests that did nothing.
#define KLDQ_SKIP(msg)                                                                     \
  do {                                                                                     \
    if (kldq::test::require_data())                                                        \
      FAIL(std::string(msg) + " (KLDQ_REQUIRE_DATA is set: every input must be present)"); \
    KLDQ_SKIP_IMPL(msg);                                                                   \
  } while (0)
#define KLDQ_SKIP_NO_CUDA()                               \
  do {                                                    \
    if (!at::hasCUDA()) KLDQ_SKIP_IMPL("no CUDA device"); \
  } while (0)

#include "support/support.hpp"
