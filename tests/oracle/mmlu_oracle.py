"""Oracle for kldq's MMLU k-shot protocol, written from lm-evaluation-harness's format.

Usage: mmlu_oracle.py MODEL MMLU_DIR LIMIT SHOTS
Reads dev/ and test/ CSVs with Python's csv module (header form: answer 0-3; Hendrycks form:
no header, answer A-D), builds each prompt as lm-evaluation-harness's `mmlu` task does
("The following are multiple choice questions (with answers) about {subject}.\\n\\n", the first
SHOTS dev questions each followed by " {letter}" and "\\n\\n", then the test question ending
"Answer:"), and scores each continuation " A".." D" as lm-evaluation-harness's loglikelihood does:
continuation tokens = encode(context + continuation)[len(encode(context)):], summed log-softmax
of those tokens, no special tokens, contexts truncated from the left to the model's context.
Prints one JSON line per question: subject, index, pred (0-3), logprobs.
"""
import csv
import json
import os
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def read_split(path):
    rows = list(csv.reader(open(path, encoding="utf-8", newline="")))
    if rows and rows[0] == HEADER:
        return [(r[0], r[1:5], int(r[5])) for r in rows[1:]]
    return [(r[0], r[1:5], "ABCD".index(r[5])) for r in rows]


def fmt(q, choices):
    return q.strip() + "".join(f"\n{l}. {c}" for l, c in zip("ABCD", choices)) + "\nAnswer:"


def main():
    model_dir, mmlu, limit, shots = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    max_len = model.config.max_position_embeddings
    subjects = sorted(f[: -len("_test.csv")] for f in os.listdir(f"{mmlu}/test") if f.endswith("_test.csv"))
    done = 0
    for subject in subjects:
        dev = read_split(f"{mmlu}/dev/{subject}_dev.csv")[:shots]
        test = read_split(f"{mmlu}/test/{subject}_test.csv")
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots_text = "".join(fmt(q, c) + " " + "ABCD"[a] + "\n\n" for q, c, a in dev)
        for index, (q, choices, answer) in enumerate(test):
            if done == limit:
                return
            context = header + shots_text + fmt(q, choices)
            ctx_ids = tok.encode(context, add_special_tokens=False).ids
            logprobs = []
            for letter in "ABCD":
                whole = tok.encode(context + " " + letter, add_special_tokens=False).ids
                cont = whole[len(ctx_ids):]
                inp = (ctx_ids + cont)[-(max_len + 1):][:-1]
                with torch.no_grad():
                    lp = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), -1)
                n = len(cont)
                logprobs.append(sum(lp[len(inp) - n + k, cont[k]].item() for k in range(n)))
            pred = max(range(4), key=lambda i: (logprobs[i], -i))
            print(json.dumps({"subject": subject, "index": index, "answer": answer, "pred": pred,
                              "logprobs": logprobs}))
            done += 1


if __name__ == "__main__":
    main()
