// MMLU: prompts against strings written from the protocols, loading both CSV forms and JSONL,
// predictions against the transformers oracle (tests/oracle/mmlu_oracle.py), flips from saved
// predictions, and data errors naming file and line.
#include "kldq/eval/flips.hpp"
#include "kldq/eval/mmlu.hpp"
#include "support/catch.hpp"

using kldq::test::read_text;
using kldq::test::run_kldq;
using kldq::test::write_text;
namespace eval = kldq::eval;

TEST_CASE("MMLU prompts of the first question of two subjects, both protocols", "[eval][mmlu]") {
  const auto dir = kldq::test::shared_data("mmlu");
  if (!dir) KLDQ_SKIP("../shared/data not present");
  const eval::MmluData data = eval::load_mmlu(*dir);
  CHECK(data.test.size() == 57);
  CHECK(data.dev.at("anatomy").size() == 5);
  eval::MmluOptions o;
  o.shots = 1;
  const auto items = eval::mmlu_items(data, o);
  CHECK(items.size() == 14042);
  CHECK(eval::mmlu_prompt(data, data.test.at("abstract_algebra")[0], o) ==
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\n"
        "Answer: B\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:");
  const auto& anatomy = data.test.at("anatomy")[0];
  const std::string q =
      "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause "
      "ipsilateral";
  const std::string options =
      "\nA. paralysis of the facial muscles.\nB. paralysis of the facial muscles and loss of "
      "taste.\nC. paralysis of the facial muscles, loss of taste and lacrimation.\nD. paralysis "
      "of the facial muscles, loss of taste, lacrimation and decreased salivation.";
  CHECK(anatomy.answer == 0);
  CHECK(eval::mmlu_prompt(data, anatomy, o) ==
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "What is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\n"
        "B. The first and second pharyngeal arches\nC. The second pharyngeal arch\n"
        "D. The second and third pharyngeal arches\nAnswer: D\n\n" +
            q + options + "\nAnswer:");
  o.protocol = eval::MmluProtocol::CHAT0SHOT;
  o.shots = 0;
  CHECK(eval::mmlu_prompt(data, anatomy, o) ==
        "<|im_start|>system\nOutput only the single letter (A, B, C, or D) corresponding to the "
        "correct answer.<|im_end|>\n<|im_start|>user\nQuestion: " +
            q + "\nOptions:" + options + "\nAnswer:<|im_end|>\n<|im_start|>assistant\n");
  o.limit = 120;  // the first N in subject order: all 100 of abstract_algebra, then anatomy
  const auto limited = eval::mmlu_items(data, o);
  REQUIRE(limited.size() == 120);
  CHECK(limited[99].subject == "abstract_algebra");
  CHECK(limited[100].subject == "anatomy");
  CHECK(limited[100].index == 0);
}

TEST_CASE("MMLU data: both CSV forms, JSONL, and errors naming file and line", "[eval][mmlu]") {
  kldq::test::TempDir dir("mmlu");
  namespace fs = kldq::test::fs;
  fs::create_directories(dir / "m/dev");
  fs::create_directories(dir / "m/test");
  // Hendrycks form (no header, letter answers), a quoted field spanning two lines, CRLF ends.
  write_text(dir / "m/test/b_sub_test.csv", "\"Two\nlines?\",w,x,\"y, z\",v,C\r\nQ2,1,2,3,4,A\r\n");
  write_text(dir / "m/dev/b_sub_dev.csv", "D1,a,b,c,d,D\n");
  write_text(dir / "m/test/a_test.csv",
             "question,choice0,choice1,choice2,choice3,answer\nQ,\"say \"\"hi\"\"\",b,c,d,3\n");
  const eval::MmluData d = eval::load_mmlu(dir / "m");
  REQUIRE(d.test.at("b_sub").size() == 2);
  CHECK(d.test.at("b_sub")[0].question == "Two\nlines?");
  CHECK(d.test.at("b_sub")[0].choices[2] == "y, z");
  CHECK(d.test.at("b_sub")[0].answer == 2);
  CHECK(d.test.at("b_sub")[1].answer == 0);
  CHECK(d.test.at("a")[0].choices[0] == "say \"hi\"");
  CHECK(d.test.at("a")[0].answer == 3);
  eval::MmluOptions o;
  o.shots = 1;  // subject "a" has no dev split
  CHECK_THROWS_WITH(eval::mmlu_items(d, o), HasText("MMLU subject a: 0 dev examples, 1 shots"));
  o.shots = 0;
  CHECK(eval::mmlu_items(d, o).size() == 3);

  write_text(dir / "m/test/c_test.csv", "Q,a,b,c,D\nQ,a,b,c,d,B\n");
  CHECK_THROWS_WITH(
      eval::load_mmlu(dir / "m"),
      HasText("c_test.csv:1: expected 6 fields (question, 4 choices, answer), got 5"));
  write_text(dir / "m/test/c_test.csv",
             "question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,4\n");
  CHECK_THROWS_WITH(eval::load_mmlu(dir / "m"), HasText("c_test.csv:2: answer \"4\" out of range"));
  write_text(dir / "m/test/c_test.csv", "Q,a,b,c,d,E\n");
  CHECK_THROWS_WITH(eval::load_mmlu(dir / "m"), HasText("c_test.csv:1: answer \"E\""));
  write_text(dir / "m/test/c_test.csv", "\"Q,a,b,c,d,A\n");
  CHECK_THROWS_WITH(eval::load_mmlu(dir / "m"),
                    HasText("c_test.csv:1: quoted field not terminated"));

  write_text(dir / "q.jsonl",
             "{\"subject\":\"s\",\"question\":\"Q\",\"choices\":[\"a\",\"b\",\"c\",\"d\"],"
             "\"answer\":\"B\"}\n{\"subject\":\"s\",\"question\":\"D\",\"choices\":[\"a\",\"b\","
             "\"c\",\"d\"],\"answer\":2,\"split\":\"dev\"}\n");
  const auto j = eval::load_mmlu(dir / "q.jsonl");
  CHECK(j.test.at("s")[0].answer == 1);
  CHECK(j.dev.at("s")[0].answer == 2);
  write_text(dir / "bad.jsonl",
             "{\"subject\":\"s\",\"question\":\"Q\",\"choices\":[\"a\"],\"answer\":1}\n");
  CHECK_THROWS_WITH(eval::load_mmlu(dir / "bad.jsonl"), HasText("bad.jsonl:1: \"choices\""));
  write_text(dir / "bad.jsonl",
             "{\"subject\":\"s\",\"question\":\"Q\",\"choices\":[\"a\",\"b\",\"c\",\"d\"],"
             "\"answer\":7}\n");
  CHECK_THROWS_WITH(eval::load_mmlu(dir / "bad.jsonl"),
                    HasText("bad.jsonl:1: answer 7 out of range"));
}

TEST_CASE("flips: counts, rates and Wilson intervals from hand-made predictions", "[eval][mmlu]") {
  // Four questions with answer A (0): the reference is right on 0 and 1; the model is right
  // on 0 and 2; question 3 changes letter while staying wrong.
  std::vector<eval::MmluPrediction> ref(4), m(4);
  const int ref_pred[] = {0, 0, 1, 1}, m_pred[] = {0, 2, 0, 3};
  for (int i = 0; i < 4; ++i) {
    ref[i].subject = m[i].subject = "s";
    ref[i].index = m[i].index = i;
    ref[i].pred = ref_pred[i], m[i].pred = m_pred[i];
  }
  const auto f = eval::flip_summary(ref, m, "test");
  CHECK(f.flip_rate == Approx(0.5));            // questions 1 and 2
  CHECK(f.answer_change_rate == Approx(0.75));  // 1, 2, 3
  CHECK(f.c2w == 1);
  CHECK(f.w2c == 1);
  CHECK(f.acc_ref == Approx(0.5));
  // Wilson 95 % interval of 2/4, by hand: 0.5 ± 1.96 sqrt(0.0625 + 0.0600) / 1.9604.
  CHECK(f.flip_rate_ci.first == Approx(0.1500).margin(1e-4));
  CHECK(f.flip_rate_ci.second == Approx(0.8500).margin(1e-4));
  m[3].index = 7;
  CHECK_THROWS_WITH(eval::flip_summary(ref, m, "prev.jsonl"),
                    HasText("prev.jsonl: reference question 4"));
}

TEST_CASE("kldq eval MMLU 5-shot on the tiny model agrees with transformers",
          "[eval][mmlu][oracle]") {
  const auto model = kldq::test::shared_data("models/stories260k-llama");
  const auto mmlu = kldq::test::shared_data("mmlu");
  if (!model || !mmlu) KLDQ_SKIP("../shared/data not present");
  const auto py = kldq::test::python_with("transformers tokenizers");
  if (!py) KLDQ_SKIP("no Python with transformers");
  kldq::test::TempDir dir("mmlu-oracle");
  const std::string out = (dir / "m.json").string();
  // Limit 110 crosses a subject boundary. The tiny model's tokenizer splits " A" into two
  // tokens, so the multi-token answer path runs here; prompts exceed its 512-token context, so
  // left truncation runs too.
  const auto r = run_kldq("eval " + model->string() + " --mmlu " + mmlu->string() +
                          " --mmlu-limit 110 --batch 16 --device cpu -o " + out);
  REQUIRE(r.rc == 0);
  const auto m = nlohmann::json::parse(read_text(out));
  CHECK(m["mmlu_n"] == 110);
  CHECK(m["mmlu_truncated"].get<int>() > 0);
  const auto o = kldq::test::run_command(*py + " " KLDQ_SOURCE_DIR "/tests/oracle/mmlu_oracle.py " +
                                         model->string() + " " + mmlu->string() + " 110 5");
  INFO(o.err);
  REQUIRE(o.rc == 0);
  std::istringstream want(o.out), got(read_text(dir / "m.predictions.jsonl"));
  std::string a, b;
  int n = 0, correct = 0;
  while (std::getline(want, a) && std::getline(got, b)) {
    const auto w = nlohmann::json::parse(a), g = nlohmann::json::parse(b);
    INFO("question " << n << ": " << a << "\n" << b);
    CHECK(g["subject"] == w["subject"]);
    CHECK(g["index"] == w["index"]);
    CHECK(g["pred"].get<std::string>()[0] - 'A' == w["pred"].get<int>());
    for (int c = 0; c < 4; ++c)
      CHECK(g["logprobs"][c].get<double>() == Approx(w["logprobs"][c].get<double>()).epsilon(1e-4));
    correct += g["correct"].get<bool>();
    ++n;
  }
  CHECK(n == 110);
  CHECK(m["mmlu_acc"].get<double>() == Approx(correct / 110.0));
  CHECK(m["mmlu_settings"]["shared_prefix"] == true);
  // Every prompt run whole (--mmlu-unshared) gives the oracle's predictions too.
  const auto u = run_kldq("eval " + model->string() + " --mmlu " + mmlu->string() +
                          " --mmlu-limit 110 --batch 16 --mmlu-unshared --device cpu -o " +
                          (dir / "u.json").string());
  REQUIRE(u.rc == 0);
  CHECK(nlohmann::json::parse(read_text(dir / "u.json"))["mmlu_settings"]["shared_prefix"] ==
        false);
  std::istringstream shared(read_text(dir / "m.predictions.jsonl")),
      whole(read_text(dir / "u.predictions.jsonl"));
  n = 0;
  while (std::getline(shared, a) && std::getline(whole, b)) {
    const auto x = nlohmann::json::parse(a), y = nlohmann::json::parse(b);
    INFO("question " << n << ": " << a << "\n" << b);
    CHECK(x["pred"] == y["pred"]);
    for (int c = 0; c < 4; ++c)
      CHECK(x["logprobs"][c].get<double>() == Approx(y["logprobs"][c].get<double>()).epsilon(1e-4));
    ++n;
  }
  CHECK(n == 110);
}

TEST_CASE("MMLU with each subject's shared prefix cached equals the full prompts (CPU fp32)",
          "[eval][mmlu]") {
  const kldq::test::fs::path data_dir = KLDQ_SOURCE_DIR "/data/demo/mmlu";
  const eval::MmluData data = eval::load_mmlu(data_dir);
  // The 4M model (one-token answers, 5-shot prompts within its context) and stories260K
  // (" A" is two tokens: each answer its own sequence; 5-shot prompts beyond its 512-token
  // context: left truncation, which leaves little to share).
  // The last case: one question of one subject with two-token answers sharing their first token
  // (the shared prefix must stop before the first answer token).
  for (auto [name, limit] : {std::pair<const char*, int64_t>{"wikitext-qwen2-4m", 0},
                             {"stories260k-qwen2", 0},
                             {"stories260k-qwen2", 1}}) {
    const auto dir = kldq::test::fs::path(KLDQ_SOURCE_DIR "/models") / name;
    const auto model = kldq::model::Decoder::load(dir, c10::kCPU, c10::kFloat);
    const auto tok = kldq::io::Tokenizer::load(dir);
    eval::MmluOptions o;
    o.shots = 5;
    o.batch = 7;
    o.limit = limit;
    o.max_len = model.config().max_position_embeddings;
    const auto items = eval::mmlu_items(data, o);
    const auto answers = eval::mmlu_answer_tokens(*tok, data, items.front(), o);
    o.shared_prefix = false;
    const auto full = eval::score_mmlu(model, *tok, data, items, answers, o, "");
    o.shared_prefix = true;
    const auto shared = eval::score_mmlu(model, *tok, data, items, answers, o, "");
    REQUIRE(full.size() == items.size());
    REQUIRE(shared.size() == items.size());
    double worst = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      for (int c = 0; c < 4; ++c)
        worst = std::max(worst, std::abs(full[i].logprobs[c] - shared[i].logprobs[c]));
      CHECK(full[i].pred == shared[i].pred);
    }
    INFO(name << " limit " << limit << ": max |log-probability difference| " << worst);
    CHECK(worst <= 1e-4);
  }
}
