// config.json parsing: transformers' defaults and both RoPE spellings, and clear errors naming
// the file and key for malformed or unsupported configs.
#include "kldq/core/error.hpp"
#include "kldq/model/config.hpp"
#include "support/catch.hpp"

namespace {

using kldq::model::parse_config;
using nlohmann::json;

json base() {
  return {{"model_type", "llama"},  {"hidden_size", 64},        {"intermediate_size", 172},
          {"num_hidden_layers", 2}, {"num_attention_heads", 8}, {"vocab_size", 100}};
}

std::string error_of(const json& j) {
  try {
    parse_config(j, "cfg.json");
  } catch (const kldq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("config defaults follow transformers", "[model][config]") {
  const auto c = parse_config(base(), "cfg.json");
  CHECK(c.num_kv_heads == 8);  // MHA when num_key_value_heads is absent
  CHECK(c.head_dim == 8);      // hidden / heads
  CHECK(c.rope_theta == 10000.0);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK_FALSE(c.attention_bias);
  json q = base();
  q["model_type"] = "qwen2";
  CHECK(parse_config(q, "cfg.json").attention_bias);  // Qwen2: q/k/v biases always
  CHECK_FALSE(parse_config(q, "cfg.json").o_bias);
}

TEST_CASE("both RoPE spellings are read", "[model][config]") {
  json j = base();
  j["rope_theta"] = 500000.0;
  CHECK(parse_config(j, "c").rope_theta == 500000.0);
  json k = base();
  k["rope_parameters"] = {{"rope_theta", 1e6}, {"rope_type", "default"}};
  CHECK(parse_config(k, "c").rope_theta == 1e6);
}

TEST_CASE("parameter count is hand-derivable", "[model][config]") {
  json j = base();
  j["num_key_value_heads"] = 2;
  j["tie_word_embeddings"] = true;
  const auto c = parse_config(j, "c");
  // q 64x64, k/v 16x64 each, o 64x64, mlp 3 x 64x172, two norms of 64; embed 100x64; final norm.
  const int64_t block = 64 * 64 + 2 * 16 * 64 + 64 * 64 + 3 * 64 * 172 + 2 * 64;
  CHECK(c.num_parameters() == 100 * 64 + 2 * block + 64);
}

TEST_CASE("bad configs name the file and key", "[model][config][errors]") {
  json j = base();
  SECTION("missing key") {
    j.erase("hidden_size");
    CHECK_THAT(error_of(j), HasText("cfg.json") && HasText("hidden_size") && HasText("missing"));
  }
  SECTION("wrong type") {
    j["num_hidden_layers"] = "two";
    CHECK_THAT(error_of(j), HasText("num_hidden_layers") && HasText("positive integer"));
  }
  SECTION("heads not divisible by kv heads") {
    j["num_key_value_heads"] = 3;
    CHECK_THAT(error_of(j), HasText("num_key_value_heads"));
  }
  SECTION("unknown rope scaling is refused, not ignored") {
    j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
    CHECK_THAT(error_of(j), HasText("rope_scaling") && HasText("yarn"));
  }
  SECTION("unsupported architecture") {
    j["model_type"] = "gpt2";
    CHECK_THAT(error_of(j), HasText("model_type") && HasText("gpt2"));
  }
  SECTION("sliding window") {
    j["model_type"] = "qwen2";
    j["use_sliding_window"] = true;
    CHECK_THAT(error_of(j), HasText("sliding"));
  }
  SECTION("not an object") {
    CHECK_THAT(error_of(json::array()), HasText("cfg.json"));
  }
}

TEST_CASE("malformed config.json files are config errors (exit 2)", "[model][config][errors]") {
  kldq::test::TempDir dir("cfg");
  kldq::test::write_text(dir / "config.json", "{\"model_type\": \"llama\",");
  try {
    kldq::model::load_config(dir / "config.json");
    FAIL("expected an error");
  } catch (const kldq::ConfigError& e) {
    CHECK_THAT(std::string(e.what()), HasText("config.json") && HasText("invalid JSON"));
    CHECK(e.exit_code() == 2);
  }
}

TEST_CASE("errors show at most a short excerpt of a value", "[model][config][errors]") {
  // A hostile config.json cannot make a message of its size: every value shown is cut to 60
  // characters (io::shown_text, io::Doc::shown), a list shown by its type.
  const std::string huge(10000, 'x');
  struct Case {
    std::string key;
    json value;
    std::string shown;
  };
  for (const Case& c : std::vector<Case>{{"model_type", huge, "xxx..."},
                                         {"hidden_size", huge, "xxx..."},
                                         {"hidden_size", std::vector<int>(10000, 7), "got array"},
                                         {"num_key_value_heads", huge, "xxx..."},
                                         {"rms_norm_eps", huge, "xxx..."},
                                         {"hidden_act", huge, "xxx..."},
                                         {"tie_word_embeddings", huge, "xxx..."},
                                         {"rope_scaling", {{"rope_type", huge}}, "xxx..."}}) {
    json j = base();
    j[c.key] = c.value;
    const std::string e = error_of(j);
    INFO(c.key << ": " << e.substr(0, 200));
    CHECK_THAT(e, HasText("cfg.json") && HasText(c.key) && HasText(c.shown));
    CHECK(e.size() < 300);
  }
}
