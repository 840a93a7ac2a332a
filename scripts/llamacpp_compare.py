"""llama.cpp against kldq on the same weights (docs/FORMATS.md, "Export"): run by hand where
llama-cpp-python can be installed (it builds llama.cpp from source, too slow for CI).

  python scripts/llamacpp_compare.py MODEL.gguf KLDQ_LOGITS.safetensors IDS.json

IDS.json holds one token-id list; KLDQ_LOGITS is `kldq logits` of the same ids on the checkpoint
the GGUF was exported from (fp32, CPU). Prints one JSON line: per-token KL(kldq || llama.cpp)
(mean, max), the largest logit difference, and both perplexities over the ids.
"""
import json, sys

import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main(gguf, kldq_path, ids_path):
    ids = json.load(open(ids_path))[0]
    llm = Llama(model_path=gguf, n_ctx=len(ids) + 8, logits_all=True, verbose=False, n_threads=2,
                n_batch=len(ids))
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], dtype=np.float64)
    ours = np.array(load_file(kldq_path)["logits"][0], dtype=np.float64)
    lp, lq = log_softmax(ours), log_softmax(theirs)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    nll = lambda l: -np.mean([l[t, ids[t + 1]] for t in range(len(ids) - 1)])
    print(json.dumps({"tokens": len(ids), "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
                      "max_logit_diff": float(np.abs(ours - theirs).max()),
                      "ppl_kldq": float(np.exp(nll(lp))), "ppl_llamacpp": float(np.exp(nll(lq)))}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
