"""Peer for bench/bench_tokenize.cpp: the Hugging Face tokenizers library, single thread.

Load time of tokenizer.json, then tokens per second encoding the file as one string (`encode`)
and line by line (`encode_batch` over the lines), each on a freshly loaded tokenizer, median of
--repeats runs. RAYON_NUM_THREADS=1 keeps encode_batch on one thread.
"""
import argparse, json, os, statistics, time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    path = os.path.join(a.model, "tokenizer.json")
    with open(a.file, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", "replace")
    lines = text.split("\n")
    load, whole, batch = [], [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter(); tok = Tokenizer.from_file(path); load.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); n = len(tok.encode(text).ids); whole.append(time.perf_counter() - t0)
        tok = Tokenizer.from_file(path)
        t0 = time.perf_counter(); nl = sum(len(e.ids) for e in tok.encode_batch(lines)); batch.append(time.perf_counter() - t0)
    med = statistics.median
    print(json.dumps({"impl": "tokenizers", "what": "load", "s": med(load)}))
    print(json.dumps({"impl": "tokenizers", "what": "encode_whole", "s": med(whole), "tokens": n, "tok_per_s": n / med(whole), "bytes": len(raw)}))
    print(json.dumps({"impl": "tokenizers", "what": "encode_lines", "s": med(batch), "tokens": nl, "tok_per_s": nl / med(batch), "bytes": len(raw)}))


if __name__ == "__main__":
    main()
