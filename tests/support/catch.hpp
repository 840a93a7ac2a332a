// Test-support header: one spelling of Catch2 for the suite, whether Catch2 2.13 (Debian) or 3.x
// (GPU machine) is installed, plus KLDQ_SKIP for tests whose data or hardware is absent.
#pragma once

#include <string>

#if KLDQ_CATCH_MAJOR >= 3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
// A skipped test is reported as skipped, not passed.
#define KLDQ_SKIP(msg) SKIP(msg)
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
#define KLDQ_SKIP(msg) \
  do {                 \
    WARN(msg);         \
    return;            \
  } while (0)
#endif

#include "support/support.hpp"
