// The quantization methods as one vocabulary: an enum, its names (as plans, profiles, experiment
// files and the command line spell them) and one traits row per method: whether it fits on
// calibration windows, and whether it fits float zero points (HQQ's _fz formats). Parsing, naming
// and those two questions go through these tables; the quantizers dispatch on the enum
// (quantize_layers, sequential.cpp).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "kldq/core/vocabulary.hpp"

namespace kldq::quant {

enum class Method { RTN, HQQ, GPTQ, AWQ };
inline constexpr Vocabulary<Method, 4> kMethods{
    "method",
    {{{Method::RTN, "rtn"}, {Method::HQQ, "hqq"}, {Method::GPTQ, "gptq"}, {Method::AWQ, "awq"}}}};

struct MethodTraits {
  Method method;
  bool calibrated;   // fits on calibration windows through the decoder (block-sequential)
  bool float_zeros;  // fits float zero points: quantizes to the int _fz formats only
};

const MethodTraits& method_traits(Method m);
inline const char* method_name(Method m) {
  return kMethods.name(m);
}
// "rtn, hqq, gptq, awq": the names in table order, for messages and help texts.
inline std::string method_names() {
  return kMethods.names();
}
// The method `text` names; ConfigError "WHAT: unknown method 'x' (one of: rtn, hqq, gptq, awq)".
inline Method parse_method(std::string_view text, const std::string& what) {
  return kMethods.parse(text, what);
}
// gptq and awq need calibration windows; rtn and hqq none.
inline bool needs_calibration(Method m) {
  return method_traits(m).calibrated;
}

// JSON holds a method by its name (never its enum value): stage keys, plans and records.
void to_json(nlohmann::json& j, Method m);

}  // namespace kldq::quant
