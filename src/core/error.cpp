// Invariant checks with source locations (kldq::check).
#include "kldq/core/error.hpp"

#include <fmt/format.h>

namespace kldq {

void check(bool ok, const std::string& what, std::source_location where) {
  if (ok) return;
  throw InternalError(
      fmt::format("internal error at {}:{}: {}", where.file_name(), where.line(), what));
}

}  // namespace kldq
