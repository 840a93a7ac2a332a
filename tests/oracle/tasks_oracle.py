"""Test oracle: zero-shot multiple-choice log-likelihoods from lm-evaluation-harness itself.

Usage:
  tasks_oracle.py --model DIR --tasks-dir DIR --tasks arc_easy,hellaswag,... --limit N \
      --out FILE.json [--batch-size B] [--show-requests K]

Runs EleutherAI lm-evaluation-harness (lm_eval.simple_evaluate with its HFLM model, CPU, fp32,
zero-shot, no chat template, no system instruction, the tokenizer's own BOS default) offline over
the local copies in --tasks-dir (/work/shared/data/mc, see its README.md). Each task is defined as a
local-file lm-eval task: a YAML per task, mirroring lm-eval's own task YAML, is written to a temporary
directory together with a utils.py (a copy of this file: its process_docs functions below) and loaded
with TaskManager(include_path=...). PIQA (separate labels file) and HellaSwag (6-line text format) are
first converted to temporary jsonl files. WinoGrande uses lm-eval's own winogrande functions.

Writes {"<task>": {"items": [{"index", "gold", "loglik": [per choice], "acc", "acc_norm"}],
"acc": mean, "acc_norm": mean or null}} for lm-eval docs 0..N-1 in file order. Log-likelihoods,
per-item acc/acc_norm and the means are lm-eval's own (logged samples and results), not recomputed.
--show-requests K prints the first K items' request arguments (context, continuation) to stderr.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

import yaml  # noqa: E402
from lm_eval import __version__ as LM_EVAL_VERSION  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks.hellaswag.utils import preprocess as hellaswag_preprocess  # noqa: E402

ALL_TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "openbookqa"]
WINOGRANDE_FNS = "lm_eval.tasks.winogrande.preprocess_winogrande"


# ---------------------------------------------------------------- process_docs (run from utils.py)

def _flatten_choices(question):
    return {"text": [c["text"] for c in question["choices"]],
            "label": [c["label"] for c in question["choices"]]}


def arc_docs(dataset):
    """AI2 ARC jsonl -> the Hugging Face ai2_arc fields lm-eval's arc YAML reads."""
    def one(doc):
        return {"id": doc["id"], "question": doc["question"]["stem"],
                "choices": _flatten_choices(doc["question"]), "answerKey": doc["answerKey"]}
    return dataset.map(one, remove_columns=dataset.column_names)


def openbookqa_docs(dataset):
    """OpenBookQA jsonl -> the Hugging Face openbookqa (main) fields lm-eval's YAML reads."""
    def one(doc):
        return {"id": doc["id"], "question_stem": doc["question"]["stem"],
                "choices": _flatten_choices(doc["question"]), "answerKey": doc["answerKey"]}
    return dataset.map(one, remove_columns=dataset.column_names)


def boolq_docs(dataset):
    """Google BoolQ dev.jsonl -> SuperGLUE boolq fields (passage = title + " -- " + passage)."""
    def one(doc):
        return {"question": doc["question"], "passage": doc["title"] + " -- " + doc["passage"],
                "label": int(doc["answer"])}
    return dataset.map(one, remove_columns=dataset.column_names)


def capitalize_after_separator(s):
    """Reader-side fix for klosax's HellaSwag text (README §1): restore ctx_b's capital letter."""
    if s.endswith((".", "!", "?", '"', "'")):
        return s
    pos = max(s.rfind(". "), s.rfind("! "), s.rfind("? "))
    if pos < 0:
        pos = s.find(": ")
    k = pos + 2
    if pos < 0 or k >= len(s) or not s[k].islower():
        return s
    return s[:k] + s[k].upper() + s[k + 1:]


def hellaswag_docs(dataset):
    """Like lm-eval's hellaswag utils.process_docs, over the converted klosax text."""
    def one(doc):
        return {"query": capitalize_after_separator(hellaswag_preprocess(doc["ctx"])),
                "choices": [hellaswag_preprocess(e) for e in doc["endings"]],
                "gold": int(doc["label"])}
    return dataset.map(one)


# ---------------------------------------------------------------- data conversion

def read_lines(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read().split("\n")


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def convert_piqa(src, dst):
    goals = [json.loads(l) for l in read_lines(src / "piqa/valid.jsonl") if l]
    labels = [int(l) for l in read_lines(src / "piqa/valid-labels.lst") if l]
    assert len(goals) == len(labels), (len(goals), len(labels))
    return write_jsonl(dst / "piqa.jsonl", [{**g, "label": y} for g, y in zip(goals, labels)])


def convert_hellaswag(src, dst):
    lines = read_lines(src / "hellaswag/hellaswag_val_full.txt")
    if lines[-1] == "":
        lines.pop()
    assert len(lines) % 6 == 0, len(lines)
    docs = [{"ctx": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2:i + 6]}
            for i in range(0, len(lines), 6)]
    return write_jsonl(dst / "hellaswag.jsonl", docs)


# ---------------------------------------------------------------- task YAMLs

class Fn(str):
    """A YAML `!function module.name` reference."""


yaml.SafeDumper.add_representer(Fn, lambda d, v: d.represent_scalar("!function", str(v)))

ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}

ARC = {"doc_to_text": "Question: {{question}}\nAnswer:",
       "doc_to_target": "{{choices.label.index(answerKey)}}",
       "doc_to_choice": "{{choices.text}}", "process_docs": Fn("utils.arc_docs"),
       "metric_list": [ACC, ACC_NORM]}

TASKS = {  # task -> (data file, lm-eval YAML fields); None = converted in convert_*()
    "arc_easy": ("arc_easy/ARC-Easy-Test.jsonl", ARC),
    "arc_challenge": ("arc_challenge/ARC-Challenge-Test.jsonl", ARC),
    "piqa": (None, {"doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label",
                    "doc_to_choice": "{{[sol1, sol2]}}", "metric_list": [ACC, ACC_NORM]}),
    "openbookqa": ("openbookqa/test.jsonl", {
        "doc_to_text": "question_stem",
        "doc_to_target": "{{choices.label.index(answerKey.lstrip())}}",
        "doc_to_choice": "{{choices.text}}", "process_docs": Fn("utils.openbookqa_docs"),
        "metric_list": [ACC, ACC_NORM]}),
    "boolq": ("boolq/dev.jsonl", {
        "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:", "doc_to_target": "label",
        "doc_to_choice": ["no", "yes"], "process_docs": Fn("utils.boolq_docs"),
        "metric_list": [ACC]}),
    "winogrande": ("winogrande/dev.jsonl", {
        "doc_to_text": Fn(f"{WINOGRANDE_FNS}.doc_to_text"),
        "doc_to_target": Fn(f"{WINOGRANDE_FNS}.doc_to_target"),
        "doc_to_choice": Fn(f"{WINOGRANDE_FNS}.doc_to_choice"), "metric_list": [ACC]}),
    "hellaswag": (None, {"doc_to_text": "{{query}}", "doc_to_target": "{{label}}",
                         "doc_to_choice": "choices", "process_docs": Fn("utils.hellaswag_docs"),
                         "metric_list": [ACC, ACC_NORM]}),
}


def data_file(task, src, work):
    if task == "piqa":
        return convert_piqa(src, work)
    if task == "hellaswag":
        return convert_hellaswag(src, work)
    return src / TASKS[task][0]


def write_task_yaml(task, data_path, work):
    cfg = {"task": task, "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"test": str(data_path)},
                              "cache_dir": str(work / "hf_datasets")},
           "output_type": "multiple_choice", "test_split": "test",
           **TASKS[task][1], "metadata": {"version": 1.0}}
    with open(work / f"{task}.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)


def build_tasks(names, src, work):
    shutil.copy(__file__, work / "utils.py")
    for task in names:
        write_task_yaml(task, data_file(task, src, work), work)
    manager = TaskManager(include_path=str(work), include_defaults=False)
    return manager.load(names)["tasks"]


# ---------------------------------------------------------------- run and collect

def gold_of(task, doc):
    """The gold index exactly as lm-eval's multiple-choice process_results takes it."""
    return task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)


def item_of(task, sample):
    lls = [float(ll) for ll, _greedy in sample["filtered_resps"]]
    return {"index": sample["doc_id"], "gold": gold_of(task, sample["doc"]), "loglik": lls,
            "acc": int(sample["acc"]),
            "acc_norm": int(sample["acc_norm"]) if "acc_norm" in sample else None}


def task_result(task, samples, metrics):
    items = [item_of(task, s) for s in sorted(samples, key=lambda s: s["doc_id"])]
    return {"items": items, "acc": metrics["acc,none"], "acc_norm": metrics.get("acc_norm,none")}


def show_requests(name, samples, k):
    for s in sorted(samples, key=lambda s: s["doc_id"])[:k]:
        print(f"== {name} doc {s['doc_id']}", file=sys.stderr)
        for context, continuation in s["arguments"]:
            print(f"  context={context!r}\n  continuation={continuation!r}", file=sys.stderr)


def run(args):
    names = args.tasks.split(",")
    unknown = sorted(set(names) - set(ALL_TASKS))
    if unknown:
        sys.exit(f"unknown tasks: {unknown} (known: {ALL_TASKS})")
    lm = HFLM(pretrained=args.model, device="cpu", dtype="float32", batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="tasks_oracle_") as tmp:
        tasks = build_tasks(names, Path(args.tasks_dir), Path(tmp))
        out = simple_evaluate(model=lm, tasks=list(tasks.values()), num_fewshot=0,
                              limit=args.limit, log_samples=True, bootstrap_iters=0,
                              apply_chat_template=False, system_instruction=None)
    for name in names:
        show_requests(name, out["samples"][name], args.show_requests)
    return {name: task_result(tasks[name], out["samples"][name], out["results"][name])
            for name in names}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tasks-dir", required=True)
    p.add_argument("--tasks", default=",".join(ALL_TASKS))
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--show-requests", type=int, default=0)
    args = p.parse_args()
    start = time.time()
    result = run(args)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"lm_eval {LM_EVAL_VERSION}: {len(result)} tasks, limit {args.limit}, "
          f"{time.time() - start:.1f} s -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
