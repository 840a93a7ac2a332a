// Outputs that cannot destroy inputs (issue 22's data-loss cases): every command's -o naming a
// directory, an input, or a file inside an input is refused with exit 2 before any work, and the
// input survives byte for byte; --force never replaces a source; an interrupted command leaves
// nothing behind, and a killed one's leftovers are removed by the next command (marker only).
#include <map>

#include "kldq/core/hash.hpp"
#include "support/catch.hpp"

namespace {
namespace fs = std::filesystem;
using kldq::test::run_command;
using kldq::test::run_kldq;

// Relative path -> SHA-256 of every file under `dir` (hidden files included).
std::map<std::string, std::string> digest(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) m[fs::relative(e.path(), dir).string()] = kldq::sha256_path(e.path());
  return m;
}

size_t hidden_entries(const fs::path& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string()[0] == '.';
  return n;
}

// A tiny checkpoint as a user would have it from the Hugging Face hub: no kldq marker.
fs::path user_model(const kldq::test::TempDir& dir) {
  const fs::path m = dir / "model";
  REQUIRE(run_kldq("synth --shape tiny -o " + m.string()).rc == 0);
  fs::remove(m / ".kldq-output");
  return m;
}

}  // namespace

TEST_CASE("kldq -o never destroys an input or a directory", "[cli][errors][outputs]") {
  kldq::test::TempDir dir("outputs");
  const fs::path model = user_model(dir);
  kldq::test::write_text(dir / "ids.json", "[[1, 2, 3]]");
  kldq::test::write_text(dir / "text.txt", "Some text.\n");
  const auto before = digest(dir.path());
  const std::string m = model.string(), ids = (dir / "ids.json").string();
  const std::string ppl = " --ppl " + (dir / "text.txt").string() + " --device cpu";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"eval " + m + ppl + " -o " + m, "is a directory"},
      {"eval " + m + ppl + " -o " + m + "/config.json", "exists inside the input"},
      {"eval " + m + ppl + " -o " + (dir / "text.txt").string(), "is an input"},
      {"eval " + m + " --mmlu " + ids + " --device cpu -o " + (dir / "x.json").string() +
           " --predictions " + m,
       "is a directory"},
      {"logits " + m + " --ids " + ids + " -o " + m, "is a directory"},
      {"logits " + m + " --ids " + ids + " -o " + ids, "is an input"},
      {"logits " + m + " --ids " + ids + " -o " + m + "/model.safetensors", "inside the input"},
      {"plan " + ids + " --uniform -o " + ids, "is an input"},
      {"plan " + ids + " --uniform -o " + m, "is a directory"},
      {"profile " + m + " --base nf4 --calib " + (dir / "text.txt").string() + " -o " + m +
           "/config.json",
       "inside the input"},
      {"quantize " + m + " --base nf4 -o " + m + " --force", "is an input"},
      {"quantize " + m + " --base nf4 -o " + dir.path().string() + " --force", "contains an input"},
      {"quantize " + m + " --base nf4 -o " + m + "/.. --force", "contains an input"},
      {"quantize " + m + " --base nf4 -o / --force", "does not name"},
      // Paths go into JSON records, which hold UTF-8 only: refused before any work.
      {"eval " + m + ppl + " -o '" + (dir / "x\xff.json").string() + "'", "not valid UTF-8"},
  };
  for (const auto& [args, message] : cases) {
    INFO(args);
    const auto r = run_kldq(args);
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText(message));
    CHECK(digest(dir.path()) == before);
  }
}

TEST_CASE("kldq --force replaces kldq's own checkpoint only", "[cli][errors][outputs]") {
  kldq::test::TempDir dir("outputs-force");
  const fs::path model = user_model(dir);
  const fs::path other = dir / "other";
  REQUIRE(run_kldq("synth --shape tiny -o " + other.string()).rc == 0);
  fs::remove(other / ".kldq-output");  // a checkpoint someone else wrote
  const auto before = digest(other);
  const auto r =
      run_kldq("quantize " + model.string() + " --base nf4 --force -o " + other.string());
  CHECK(r.rc == 2);
  CHECK_THAT(r.err, HasText("kldq did not write it"));
  CHECK(digest(other) == before);
  // kldq's own quantized checkpoint is replaced, leaving one clean directory.
  const fs::path q = dir / "q";
  REQUIRE(run_kldq("quantize " + model.string() + " --base nf4 -o " + q.string()).rc == 0);
  REQUIRE(run_kldq("quantize " + model.string() + " --base fp8_e4m3 --force -o " + q.string()).rc ==
          0);
  CHECK_THAT(kldq::test::read_text(q / "quantization.json"), HasText("fp8_e4m3"));
  CHECK(hidden_entries(dir.path()) == 0);
}

TEST_CASE("interrupted synth leaves nothing; a killed one's leftovers go next time",
          "[cli][outputs]") {
  kldq::test::TempDir dir("outputs-signal");
  const std::string out = (dir / "big").string();
  // Start a 0.5B synth (seconds of work: 1 GB to generate and write), wait up to 20 s for its
  // temporary, signal it while it still runs, and print its status ("done" if it ended first).
  auto interrupted = [&](const char* sig) {
    const std::string d = "'" + dir.path().string() + "'";
    return run_command("'" + std::string(KLDQ_BINARY) + "' synth --shape qwen2.5-0.5b -o '" + out +
                       "' 2>/dev/null & p=$!; for i in $(seq 1000); do [ -n \"$(ls -A " + d +
                       ")\" ] && break; sleep 0.02; done; sleep 0.3; kill -0 $p || "
                       "{ echo done; exit; }; kill -" +
                       sig + " $p; wait $p; echo $?");
  };
  CHECK(interrupted("TERM").out == "143\n");  // 128 + SIGTERM: ended by the signal
  CHECK(hidden_entries(dir.path()) == 0);
  CHECK_FALSE(fs::exists(out));
  CHECK(interrupted("KILL").out == "137\n");
  CHECK(hidden_entries(dir.path()) == 1);  // SIGKILL cannot be handled
  // A user's file named like an old temporary is not touched.
  kldq::test::write_text(dir / ".big.tmp.999999", "mine");
  REQUIRE(run_kldq("synth --shape tiny -o " + (dir / "small").string()).rc == 0);
  CHECK(hidden_entries(dir.path()) == 1);
  CHECK(kldq::test::read_text(dir / ".big.tmp.999999") == "mine");
}
