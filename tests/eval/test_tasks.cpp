// Zero-shot tasks: loaders against hand-derived items, lm-eval's tokenization of pairs, flips
// against hand counts, bad inputs, and per-item log-likelihoods against lm-evaluation-harness
// itself (tests/oracle/tasks_oracle.py) on the 4M model and stories260K.
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/experiment/results.hpp"
#include "support/catch.hpp"

namespace fs = std::filesystem;
using kldq::eval::load_task;

namespace {

std::string load_error(const std::string& name, const fs::path& dir) {
  try {
    load_task(name, dir, 0);
  } catch (const kldq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("task loaders build lm-eval's contexts and continuations", "[tasks]") {
  kldq::test::TempDir dir("tasks");
  fs::create_directories(dir / "arc_easy");
  kldq::test::write_text(
      dir / "arc_easy/ARC-Easy-Test.jsonl",
      R"({"id": "x", "question": {"stem": "Why?", "choices": [{"text": "Because", "label": "A"},)"
      R"( {"text": "café", "label": "B"}]}, "answerKey": "B"})"
      "\n");
  const auto arc = load_task("arc_easy", dir.path(), 0);
  REQUIRE(arc.items.size() == 1);
  const auto& a = arc.items[0];
  CHECK(a.contexts ==
        std::vector<std::string>{"Question: Why?\nAnswer:", "Question: Why?\nAnswer:"});
  CHECK(a.continuations == std::vector<std::string>{" Because", " café"});
  CHECK(a.choice_chars == std::vector<int64_t>{7, 4});  // code points, not bytes
  CHECK(a.gold == 1);
  CHECK(arc.has_norm);

  fs::create_directories(dir / "winogrande");
  kldq::test::write_text(dir / "winogrande/dev.jsonl",
                         R"({"qID": "q", "sentence": "Sarah beat Maria so _ won the cup. ",)"
                         R"( "option1": "Sarah", "option2": "Maria", "answer": "2"})"
                         "\n");
  const auto wg = load_task("winogrande", dir.path(), 0);
  CHECK(wg.items[0].contexts ==
        std::vector<std::string>{"Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"});
  CHECK(wg.items[0].continuations == std::vector<std::string>{" won the cup.", " won the cup."});
  CHECK(wg.items[0].gold == 1);
  CHECK_FALSE(wg.has_norm);

  fs::create_directories(dir / "boolq");
  kldq::test::write_text(dir / "boolq/dev.jsonl",
                         R"({"question": "is it", "title": "T", "answer": true, "passage": "P."})"
                         "\n");
  const auto bq = load_task("boolq", dir.path(), 0);
  CHECK(bq.items[0].contexts[0] == "T -- P.\nQuestion: is it?\nAnswer:");
  CHECK(bq.items[0].continuations == std::vector<std::string>{" no", " yes"});
  CHECK(bq.items[0].gold == 1);

  fs::create_directories(dir / "piqa");
  kldq::test::write_text(dir / "piqa/valid.jsonl", R"({"goal": "g1", "sol1": "a ", "sol2": "b"})"
                                                   "\n"
                                                   R"({"goal": "g2", "sol1": "c", "sol2": "d"})"
                                                   "\n");
  kldq::test::write_text(dir / "piqa/valid-labels.lst", "1\n0\n");
  const auto pq = load_task("piqa", dir.path(), 0);
  CHECK(pq.items[0].continuations == std::vector<std::string>{" a ", " b"});  // verbatim
  CHECK(pq.items[0].gold == 1);
  CHECK(pq.items[1].gold == 0);
  CHECK(load_task("piqa", dir.path(), 1).items.size() == 1);  // --tasks-limit

  // HellaSwag: lm-eval's preprocess on the stored text, and ctx_b's capital restored.
  fs::create_directories(dir / "hellaswag");
  kldq::test::write_text(dir / "hellaswag/hellaswag_val_full.txt",
                         "Roof shingle removal: A man is on a roof. he\n2\n"
                         "is [title] up.\n  takes  [insert name] off\nx\ny\n");
  const auto hs = load_task("hellaswag", dir.path(), 0);
  CHECK(hs.items[0].contexts[0] == "Roof shingle removal: A man is on a roof. He");
  CHECK(hs.items[0].continuations == std::vector<std::string>{" is. up.", " takes  off", " x",
                                                              " y"});  // one pass of "  " -> " "
  CHECK(hs.items[0].gold == 2);

  kldq::test::write_text(dir / "mine.jsonl",
                         R"({"context": "2+2=", "choices": ["4", "5", "22"], "answer": 0})"
                         "\n");
  const auto g = load_task("mine", dir.path(), 0);
  CHECK(g.items[0].continuations == std::vector<std::string>{" 4", " 5", " 22"});
  CHECK(kldq::eval::parse_task_list("piqa,mine", dir.path(), "--tasks") ==
        std::vector<std::string>{"piqa", "mine"});
}

TEST_CASE("task files with bad rows are refused naming the file and line", "[tasks][errors]") {
  kldq::test::TempDir dir("tasks-bad");
  const std::string ok = R"({"context": "c", "choices": ["a", "b"], "answer": 1})";
  auto generic = [&](const std::string& second) {
    kldq::test::write_text(dir / "t.jsonl", ok + "\n" + second + "\n");
    return load_error("t", dir.path());
  };
  CHECK_THAT(generic(R"({"choices": ["a", "b"], "answer": 1})"),
             HasText("t.jsonl:2:") && HasText("context"));
  CHECK_THAT(generic(R"({"context": "c", "choices": ["a", "b"], "answer": 2})"),
             HasText("t.jsonl:2:") && HasText("is not a choice's index (0 to 1)"));
  CHECK_THAT(generic(R"({"context": "c", "choices": ["a"], "answer": 0})"),
             HasText("t.jsonl:2:") && HasText("fewer than two choices"));
  CHECK_THAT(generic("{not json"), HasText("t.jsonl:2:"));
  CHECK_THAT(load_error("arc_easy", dir.path()), HasText("ARC-Easy-Test.jsonl: no such file"));
  fs::create_directories(dir / "piqa");
  kldq::test::write_text(dir / "piqa/valid.jsonl", R"({"goal": "g", "sol1": "a", "sol2": "b"})"
                                                   "\n");
  kldq::test::write_text(dir / "piqa/valid-labels.lst", "2\n");
  CHECK_THAT(load_error("piqa", dir.path()), HasText("valid-labels.lst:1: a label is 0 or 1"));
  CHECK_THROWS_WITH(kldq::eval::parse_task_list("piqa,hellasvag", dir.path(), "--tasks"),
                    HasText("unknown task 'hellasvag'") && HasText("built in: arc_easy"));
  CHECK_THROWS_WITH(kldq::eval::parse_task_list("piqa,piqa", dir.path(), "--tasks"),
                    HasText("'piqa' given twice"));
  kldq::test::write_text(dir / "mmlu.jsonl", ok + "\n");
  CHECK_THROWS_WITH(kldq::eval::parse_task_list("mmlu", dir.path(), "--tasks"),
                    HasText("letters, digits, _ and - only, and not mmlu"));
  CHECK_THAT(generic(R"({"context": "c", "choices": ["a", "b"], "answer": 4294967296})"),
             HasText("t.jsonl:2:") && HasText("is not a choice's index (0 to 1)"));
  kldq::test::write_text(dir / "piqa/valid-labels.lst", "1\n0\n");  // one label too many
  CHECK_THAT(load_error("piqa", dir.path()), HasText("valid-labels.lst:2: 2 labels for 1 items"));
  CHECK(load_task("piqa", dir.path(), 1).items.size() == 1);  // a limit reads only what it needs
  fs::create_directories(dir / "hellaswag");
  kldq::test::write_text(dir / "hellaswag/hellaswag_val_full.txt", "ctx\n0\na\nb\xff\nc\nd\n");
  CHECK_THAT(load_error("hellaswag", dir.path()),
             HasText("hellaswag_val_full.txt:4: invalid UTF-8 at byte 1"));
}

TEST_CASE("task flips count changed correctness of the headline prediction", "[tasks]") {
  kldq::eval::Task t;
  t.name = "x";
  t.has_norm = true;
  // gold, pred, pred_norm per item: flips compare pred_norm (acc_norm) for a task that has it.
  auto preds = [](std::vector<std::array<int, 3>> rows) {
    std::vector<kldq::eval::TaskPrediction> out;
    for (size_t i = 0; i < rows.size(); ++i)
      out.push_back({int64_t(i), rows[i][0], rows[i][1], rows[i][2], {0, 0, 0}, false});
    return out;
  };
  const auto ref = preds({{0, 0, 0}, {1, 0, 1}, {2, 2, 0}, {0, 1, 1}});
  const auto m = preds({{0, 0, 1}, {1, 1, 1}, {2, 2, 2}, {0, 2, 1}});
  const auto j = kldq::eval::task_flips(t, ref, m, "ref");
  // correct by pred_norm: ref 1,1,0,0; model 0,1,1,0 -> 2 flips (c2w 1, w2c 1), changes 2
  CHECK(j["flip_rate"].get<double>() == 0.5);
  CHECK(j["c2w"] == 1);
  CHECK(j["w2c"] == 1);
  CHECK(j["answer_change_rate"].get<double>() == 0.5);
  CHECK(j["acc_norm_ref"].get<double>() == 0.5);
  auto other = m;
  other[3].gold = 1;
  CHECK_THROWS_WITH(kldq::eval::task_flips(t, ref, other, "ref"), HasText("not the same items"));
}

TEST_CASE("run records and summary.csv get one column per task metric", "[tasks][experiment]") {
  const nlohmann::json metrics = {
      {"tasks",
       {{"piqa", {{"acc", 0.5}, {"acc_norm", 0.6}, {"flip_rate", 0.1}, {"acc_norm_ref", 0.7}}},
        {"boolq", {{"acc", 0.4}, {"acc_ref", 0.3}}}}}};
  nlohmann::json r = kldq::experiment::task_record_metrics(metrics);
  CHECK(r["piqa_acc_norm"] == 0.6);
  CHECK(r["tasks_mean"].get<double>() == Approx((0.6 + 0.4) / 2));  // acc_norm, else acc
  CHECK(r["tasks_mean_ref"].get<double>() == Approx((0.7 + 0.3) / 2));
  r["point"] = 0;
  const std::string csv = kldq::experiment::summary_csv({r});
  const std::string header = csv.substr(0, csv.find('\r'));
  // built-in order: piqa before boolq, whatever the metrics' key order
  CHECK_THAT(header, HasText("answer_change_rate,piqa_acc,piqa_acc_norm,piqa_flip_rate,boolq_acc,"
                             "tasks_mean,tasks_mean_ref"));
  CHECK(kldq::experiment::task_record_metrics(nlohmann::json::object()).empty());
  r["model_name"] = "m";
  const std::string md = kldq::experiment::summary_markdown({r});
  CHECK_THAT(md, HasText("| model | # | piqa | boolq | mean |"));
  CHECK_THAT(md, HasText("| m | 0 | 0.6000 (0.1000) | 0.4000 | 0.5000 |"));
}

namespace {

const fs::path kWiki = KLDQ_SOURCE_DIR "/models/wikitext-qwen2-4m";
const char* kAllTasks = "arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq,openbookqa";

}  // namespace

TEST_CASE("a context's trailing whitespace moves to its continuation, as in lm-eval", "[tasks]") {
  const auto tok = kldq::io::Tokenizer::load(kWiki);
  const auto a = kldq::eval::encode_pair(*tok, "Question: why?\nAnswer: \n", "yes");
  const auto b = kldq::eval::encode_pair(*tok, "Question: why?\nAnswer:", " \nyes");
  CHECK(a == b);
  CHECK(a.first == tok->encode("Question: why?\nAnswer:", true));
  const auto whole = tok->encode("Question: why?\nAnswer: \nyes", true);
  CHECK(std::equal(a.second.begin(), a.second.end(), whole.end() - long(a.second.size())));
}

TEST_CASE("task log-likelihoods equal lm-evaluation-harness's, item by item", "[tasks][oracle]") {
  const auto py = kldq::test::python_with("lm_eval transformers torch");
  REQUIRE(py);  // scripts/setup.sh installs lm-eval into the venv; CI has it
  const auto mc = kldq::test::shared_data("mc");
  const auto llama = kldq::test::shared_data("models/stories260k-llama");
  if (!mc || !llama) KLDQ_SKIP("needs ../shared/data/mc and models/stories260k-llama");
  // The 4M model (Qwen2, no BOS, 1024 positions) and stories260K as Llama (BOS, 512 positions:
  // BoolQ passages are cut from the left there, as lm-eval cuts them).
  for (const fs::path& model : {kWiki, *llama}) {
    kldq::test::TempDir work("tasks-oracle");
    const auto r = kldq::test::run_command(
        *py + " " KLDQ_SOURCE_DIR "/tests/oracle/tasks_oracle.py --model " + model.string() +
        " --tasks-dir " + mc->string() + " --tasks " + kAllTasks +
        " --limit 200 --batch-size 16 --out " + (work / "o.json").string());
    INFO(r.err.substr(r.err.size() > 3000 ? r.err.size() - 3000 : 0));
    REQUIRE(r.rc == 0);
    const auto want = nlohmann::json::parse(kldq::test::read_text(work / "o.json"));
    at::InferenceMode guard;
    const auto m = kldq::model::Decoder::load(model, c10::kCPU, c10::kFloat);
    const auto tok = kldq::io::Tokenizer::load(model);
    kldq::eval::TaskOptions o;
    o.batch = 16;
    o.max_len = m.config().max_position_embeddings;
    for (const std::string& name : kldq::eval::builtin_tasks()) {
      const auto task = load_task(name, *mc, 200);
      const auto got = kldq::eval::score_task(m, *tok, task, o, name);
      const auto& items = want.at(name).at("items");
      REQUIRE(items.size() == got.size());
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        INFO(model.filename().string() << " " << name << " item " << i);
        const auto ll = items[i].at("loglik").get<std::vector<double>>();
        REQUIRE(ll.size() == got[i].loglik.size());
        CHECK(items[i].at("gold").get<int>() == got[i].gold);
        for (size_t c = 0; c < ll.size(); ++c) {
          // fp32 sums over up to ~100 tokens in another order: 1e-4 plus 1e-6 relative.
          CHECK(std::abs(ll[c] - got[i].loglik[c]) <= 1e-4 + 1e-6 * std::abs(ll[c]));
          worst = std::max(worst, std::abs(ll[c] - got[i].loglik[c]));
        }
        CHECK(items[i].at("acc").get<int>() == int(got[i].pred == got[i].gold));
        if (task.has_norm)
          CHECK(items[i].at("acc_norm").get<int>() == int(got[i].pred_norm == got[i].gold));
      }
      WARN(model.filename().string() << " " << name << ": max |loglik - lm-eval's| " << worst);
    }
  }
}

TEST_CASE("task scores do not depend on the batch: no shared prefix, long prefixes, whole runs",
          "[tasks]") {
  // A generic task on the 4M model (1024 positions): a one-token context (no shared prefix: the
  // item's row is all padding in a batch's prefix pass), a context cut from the left, and long
  // choices after a short context; together in one batch the padded prefix and continuation
  // span more than the context, so that batch runs its sequences whole.
  kldq::test::TempDir dir("tasks-batch");
  std::string words, tail;
  for (int i = 0; i < 1100; ++i) words += i % 7 ? "the " : "city ";
  for (int i = 0; i < 60; ++i) tail += "of the war ";
  nlohmann::json rows[] = {
      {{"context", "The"}, {"choices", {"cat sat", "war ended in the city"}}, {"answer", 0}},
      {{"context", words}, {"choices", {"end", "war", "city of"}}, {"answer", 1}},
      {{"context", "In the"}, {"choices", {tail, tail + "city", "war"}}, {"answer", 2}}};
  kldq::test::write_text(dir / "mix.jsonl",
                         rows[0].dump() + "\n" + rows[1].dump() + "\n" + rows[2].dump() + "\n");
  at::InferenceMode guard;
  const auto m = kldq::model::Decoder::load(kWiki, c10::kCPU, c10::kFloat);
  const auto tok = kldq::io::Tokenizer::load(kWiki);
  const auto task = load_task("mix", dir.path(), 0);
  const auto t = kldq::eval::tokenize_task(*tok, task, 1024, m.config().vocab_size);
  CHECK(t.truncated == std::vector<bool>{false, true, false});
  CHECK(t.longest[1] == 1024);
  CHECK(t.longest[2] > 120);
  const auto one = kldq::eval::score_task(m, task, t, 1, "mix");
  const auto three = kldq::eval::score_task(m, task, t, 3, "mix");
  for (size_t i = 0; i < 3; ++i)
    for (size_t c = 0; c < one[i].loglik.size(); ++c) {
      INFO("item " << i << " choice " << c);
      CHECK(one[i].loglik[c] == Approx(three[i].loglik[c]).margin(1e-4));
    }
  // A context of whitespace alone has no tokens (no BOS here): refused before any model runs.
  kldq::test::write_text(dir / "blank.jsonl",
                         R"({"context": " ", "choices": ["a", "b"], "answer": 0})"
                         "\n");
  CHECK_THROWS_WITH(
      kldq::eval::tokenize_task(*tok, load_task("blank", dir.path(), 0), 1024, 1 << 20),
      HasText("blank.jsonl: item 0 choice 0: the context has no tokens"));
}

TEST_CASE("task scores do not depend on the batch", "[tasks]") {
  const auto mc = kldq::test::shared_data("mc");
  if (!mc) KLDQ_SKIP("needs ../shared/data/mc");
  at::InferenceMode guard;
  const auto m = kldq::model::Decoder::load(kWiki, c10::kCPU, c10::kFloat);
  const auto tok = kldq::io::Tokenizer::load(kWiki);
  kldq::eval::TaskOptions o;
  o.max_len = m.config().max_position_embeddings;
  for (const char* name : {"hellaswag", "winogrande"}) {
    const auto task = load_task(name, *mc, 24);
    o.batch = 1;
    const auto one = kldq::eval::score_task(m, *tok, task, o, name);
    o.batch = 7;
    const auto seven = kldq::eval::score_task(m, *tok, task, o, name);
    for (size_t i = 0; i < one.size(); ++i)
      for (size_t c = 0; c < one[i].loglik.size(); ++c)
        CHECK(one[i].loglik[c] == Approx(seven[i].loglik[c]).margin(1e-4));
  }
}

TEST_CASE("kldq eval --tasks: metrics, predictions, flips and errors", "[tasks][cli]") {
  const auto mc = kldq::test::shared_data("mc");
  if (!mc) KLDQ_SKIP("needs ../shared/data/mc");
  kldq::test::TempDir work("tasks-cli");
  const std::string base = kWiki.string() + " --tasks-dir " + mc->string();
  const auto ok = kldq::test::run_kldq("eval " + base +
                                       " --tasks piqa,winogrande --tasks-limit 20 --base int4_g64 "
                                       "--batch 4 -o " +
                                       (work / "m.json").string());
  INFO(ok.err);
  REQUIRE(ok.rc == 0);
  CHECK_THAT(ok.out, HasText("piqa acc ") && HasText("winogrande acc "));
  const auto j = nlohmann::json::parse(kldq::test::read_text(work / "m.json"));
  CHECK(j["tasks"]["piqa"]["n"] == 20);
  CHECK(j["tasks"]["piqa"].contains("flip_rate"));  // against MODEL unquantized
  CHECK_FALSE(j["tasks"]["winogrande"].contains("acc_norm"));
  const std::string rows = kldq::test::read_text(work / "m.tasks.jsonl");
  CHECK(std::count(rows.begin(), rows.end(), '\n') == 40);

  auto rc_err = [&](const std::string& args) {
    const auto r = kldq::test::run_kldq("eval " + args + " -o " + (work / "e.json").string());
    CHECK_FALSE(fs::exists(work / "e.json"));
    return std::pair{r.rc, r.err};
  };
  CHECK(rc_err(kWiki.string() + " --tasks piqa") ==
        std::pair{2, std::string("kldq error: --tasks: needs --tasks-dir (where the task files "
                                 "are)\n")});
  auto [rc, err] = rc_err(base + " --tasks piqa,nope");
  CHECK(rc == 2);
  CHECK_THAT(err, HasText("unknown task 'nope'"));
  std::tie(rc, err) = rc_err(kWiki.string() + " --tasks-dir " + mc->string() + " --ppl x");
  CHECK(rc == 2);
  CHECK_THAT(err, HasText("--tasks-dir: needs --tasks"));
}

TEST_CASE("kldq run with eval.tasks: the reference's task predictions give each point's flips",
          "[tasks][cli][experiment]") {
  const auto mc = kldq::test::shared_data("mc");
  if (!mc) KLDQ_SKIP("needs ../shared/data/mc");
  kldq::test::TempDir work("tasks-run");
  kldq::test::write_text(work / "e.yaml", "name: t\nmodels: [" + kWiki.string() +
                                              "]\ndata: {tasks: " + mc->string() +
                                              "}\neval: {tasks: [piqa, winogrande], "
                                              "tasks_limit: 12, batch: 4}\n"
                                              "sweep: {base: [int4_g64, int2_g32]}\n");
  const auto r = kldq::test::run_kldq("run " + (work / "e.yaml").string() + " --output " +
                                      (work / "out").string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const std::string csv = kldq::test::read_text(work / "out/summary.csv");
  CHECK_THAT(csv, HasText("piqa_acc,piqa_acc_norm,piqa_flip_rate,winogrande_acc,"
                          "winogrande_flip_rate,tasks_mean,tasks_mean_ref"));
  const auto lines = kldq::test::read_text(work / "out/runs.jsonl");
  std::istringstream in(lines);
  int n = 0;
  for (std::string l; std::getline(in, l); ++n) {
    const auto rec = nlohmann::json::parse(l);
    // Flips against the reference stage's saved predictions, computed by hand from both files.
    const auto eval_dir = (work / "out" / rec["eval_file"].get<std::string>()).parent_path();
    std::vector<nlohmann::json> ref, pt;
    auto rows = [](const fs::path& f) {
      std::vector<nlohmann::json> out;
      std::istringstream s(kldq::test::read_text(f));
      for (std::string x; std::getline(s, x);)
        if (nlohmann::json::parse(x)["task"] == "piqa") out.push_back(nlohmann::json::parse(x));
      return out;
    };
    pt = rows(eval_dir / "metrics.tasks.jsonl");
    fs::path ref_dir;
    for (const auto& d : fs::directory_iterator(work / "out/stages"))
      if (d.path().filename().string().rfind("reference-", 0) == 0) ref_dir = d.path();
    ref = rows(ref_dir / "metrics.tasks.jsonl");
    REQUIRE(ref.size() == 12);
    REQUIRE(pt.size() == 12);
    int flips = 0;
    for (size_t i = 0; i < 12; ++i)
      flips += (ref[i]["pred_norm"] == ref[i]["gold"]) != (pt[i]["pred_norm"] == pt[i]["gold"]);
    CHECK(rec["piqa_flip_rate"].get<double>() == Approx(flips / 12.0));
  }
  CHECK(n == 2);
}
