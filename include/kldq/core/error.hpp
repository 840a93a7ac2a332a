// kldq's error types and their exit codes: every failure a user can cause is one of these,
// with a message that names the file, key, layer or format it concerns.
#pragma once

#include <source_location>
#include <stdexcept>
#include <string>

namespace kldq {

// Exit codes of the kldq binary (README.md, "Commands built so far": exit status).
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;

// Base of every kldq error. exit_code() says how the CLI ends when it escapes.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  virtual int exit_code() const { return kExitRuntime; }
};

// Bad command line or configuration (config.json, experiment files): exit 2.
class ConfigError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitUsage; }
};

// A file that cannot be read, or whose contents are malformed: exit 1.
class IoError : public Error {
 public:
  using Error::Error;
};

// Valid input that kldq does not implement (a rope_scaling type, a pickle checkpoint): exit 2,
// since the user has to change what they asked for.
class UnsupportedError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitUsage; }
};

// Broken internal invariant: a bug in kldq, reported with the source location.
class InternalError : public Error {
 public:
  using Error::Error;
};

// KLDQ_CHECK-style invariant check that throws InternalError with file:line.
void check(bool ok, const std::string& what,
           std::source_location where = std::source_location::current());

}  // namespace kldq
