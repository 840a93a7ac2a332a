// One typed vocabulary per concept (a method, a protocol, a planner, a profile mode...): an enum's
// values and their names as one table, which gives the parser (one error format for every
// concept), the name, and the list for messages and help texts. The command line, experiment files
// and JSON readers all parse and name values through it (code that acts on a value still
// switches on the enum).
#pragma once

#include <fmt/format.h>

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "kldq/core/error.hpp"

namespace kldq {

template <class E>
struct Term {
  E value;
  const char* name;
};

template <class E, size_t N>
class Vocabulary {
 public:
  constexpr Vocabulary(const char* kind, std::array<Term<E>, N> terms)
      : kind_(kind), terms_(terms) {}

  const char* name(E value) const {
    for (const Term<E>& t : terms_)
      if (t.value == value) return t.name;
    throw InternalError(fmt::format("a {} without a name", kind_));
  }
  std::optional<E> find(std::string_view text) const {
    for (const Term<E>& t : terms_)
      if (text == t.name) return t.value;
    return std::nullopt;
  }
  // ConfigError "WHAT: unknown KIND 'TEXT' (one of: a, b, c)".
  E parse(std::string_view text, const std::string& what) const {
    if (const auto v = find(text)) return *v;
    throw ConfigError(fmt::format("{}: unknown {} '{}' (one of: {})", what, kind_, text, names()));
  }
  // "a, b, c": the names in table order.
  std::string names() const {
    std::string s;
    for (const Term<E>& t : terms_) s += (s.empty() ? "" : ", ") + std::string(t.name);
    return s;
  }
  const std::array<Term<E>, N>& terms() const { return terms_; }

 private:
  const char* kind_;
  std::array<Term<E>, N> terms_;
};

}  // namespace kldq
