// The typed document reader (io::Doc): its one error format, presence against null, bounds and
// the error type of each kind of document; the JSON Lines row reader every JSONL input shares.
// Messages written out by hand.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kldq/core/error.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/json_util.hpp"
#include "support/catch.hpp"

using kldq::io::Doc;
using kldq::io::DocKind;
using nlohmann::json;

TEST_CASE("Doc errors name the file and the key path in one format", "[io]") {
  const json j = json::parse(R"({"a": {"b": [1, "x", {"c": null}]}, "n": 2.5, "s": "t"})");
  const Doc d(j, "f.json", DocKind::CONFIG);
  CHECK(d["a"]["b"][1].str() == "x");
  CHECK(d["a"]["b"][0].integer(0, 5) == 1);
  CHECK_THROWS_WITH(d["a"]["b"][0].integer(2, 5),
                    HasText("f.json: a.b[0]: expected an integer in [2, 5], got 1"));
  CHECK_THROWS_WITH(d["a"]["b"][1].boolean(),
                    HasText("f.json: a.b[1]: expected true or false, got \"x\""));
  CHECK_THROWS_WITH(d["a"]["b"][2]["d"], HasText("f.json: a.b[2].d: missing"));
  CHECK_THROWS_WITH(d["a"]["b"][3], HasText("f.json: a.b: no element 3 (size 3)"));
  CHECK_THROWS_WITH(d["a"].size(), HasText("f.json: a: expected a list, got object"));
  CHECK_THROWS_WITH(d["s"]["x"], HasText("f.json: s: expected an object, got string"));
  CHECK_THROWS_WITH(d.keys({"a", "n"}), HasText("f.json: s: unknown key"));
  CHECK_THROWS_WITH(d.fail("bad as a whole"), HasText("f.json: bad as a whole"));
  CHECK(d["a"].where() == "f.json: a");
  CHECK(d.where() == "f.json");
}

TEST_CASE("Doc tells a null member from an absent one", "[io]") {
  const json j = {{"z", nullptr}, {"v", 3}};
  const Doc d(j, "g.json", DocKind::CONFIG);
  CHECK(d.contains("z"));
  CHECK_FALSE(d.has("z"));  // null counts as absent for optional members
  CHECK_FALSE(d.contains("w"));
  CHECK(d.str_or("z", "dflt") == "dflt");
  CHECK(d["z"].is_null());
  CHECK(d.has("v"));
}

TEST_CASE("Doc numbers are finite and within bounds; values shown briefly", "[io]") {
  const json j = {{"inf", std::numeric_limits<double>::infinity()},
                  {"nan", std::nan("")},
                  {"x", 0.5},
                  {"big", std::string(200, 'q')},
                  {"list", json::array({1, 2, 3})}};
  const Doc d(j, "h.json", DocKind::CONFIG);
  CHECK(d["x"].number(0, 1) == 0.5);
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(d["inf"].number(-inf, inf), kldq::ConfigError);
  CHECK_THROWS_AS(d["nan"].number(-inf, inf), kldq::ConfigError);
  CHECK(d["x"].finite() == 0.5);
  CHECK_THROWS_WITH(d["inf"].finite(), HasText("h.json: inf: expected a finite number"));
  CHECK_THROWS_WITH(d["nan"].finite(), HasText("h.json: nan: expected a finite number"));
  CHECK_THROWS_WITH(d["big"].finite(), HasText("h.json: big: expected a finite number"));
  CHECK_THROWS_WITH(d["x"].number(1, 2),
                    HasText("h.json: x: expected a number in [1, 2], got 0.5"));
  // A long scalar is cut to 60 characters, a list shown by its type.
  try {
    d["big"].integer();
    FAIL("no error");
  } catch (const kldq::ConfigError& e) {
    const std::string m = e.what();
    CHECK(m.find("...") != std::string::npos);
    CHECK(m.size() < 120);
  }
  CHECK_THROWS_WITH(d["list"].str(), HasText("h.json: list: expected a string, got array"));
  // A text shown alone: as is up to 60 bytes, else its first 57 cut at a character boundary.
  using kldq::io::shown_text;
  CHECK(shown_text(std::string(60, 'a')) == std::string(60, 'a'));
  CHECK(shown_text(std::string(61, 'a')) == std::string(57, 'a') + "...");
  CHECK(shown_text(std::string(56, 'a') + "\u00e9" + std::string(10, 'b')) ==
        std::string(56, 'a') + "...");  // not half of the two-byte é
}

TEST_CASE("Doc throws IoError for data documents and ConfigError for configuration", "[io]") {
  const json j = {{"k", 1}};
  CHECK_THROWS_AS(Doc(j, "t.json", DocKind::DATA)["m"], kldq::IoError);
  CHECK_THROWS_AS(Doc(j, "c.json", DocKind::CONFIG)["m"], kldq::ConfigError);
}

TEST_CASE("JSON Lines rows: blank lines skipped but counted, each error names its line", "[io]") {
  std::vector<std::string> seen;
  const auto keep = [&](const json& j, const std::string& where) {
    seen.push_back(where + "=" + j.dump());
  };
  kldq::io::for_each_jsonl_row("{\"a\":1}\r\n\r\n  \t\n[2]\n\"x\"", "r.jsonl", false, keep);
  CHECK(seen ==
        std::vector<std::string>{"r.jsonl:1={\"a\":1}", "r.jsonl:4=[2]", "r.jsonl:5=\"x\""});
  // A malformed line: the error type the caller chose, naming the file and line, and no later
  // row is handed on.
  seen.clear();
  CHECK_THROWS_AS(kldq::io::for_each_jsonl_row("1\n\n{oops\n2", "p.jsonl", false, keep),
                  kldq::IoError);
  CHECK(seen == std::vector<std::string>{"p.jsonl:1=1"});
  CHECK_THROWS_WITH(kldq::io::for_each_jsonl_row("1\n\n{oops\n2", "p.jsonl", true, keep),
                    HasText("p.jsonl:3: invalid JSON"));
  CHECK_THROWS_AS(kldq::io::for_each_jsonl_row("{oops", "p.jsonl", true, keep), kldq::ConfigError);
  // Nesting is bounded as for whole documents (parse_json).
  CHECK_THROWS_WITH(kldq::io::for_each_jsonl_row(std::string(200, '[') + std::string(200, ']'),
                                                 "d.jsonl", false, keep),
                    HasText("d.jsonl:1: JSON nested deeper than 128 levels"));
}
