"""Oracle for kldq's tokenizer tests: the Hugging Face `tokenizers` library and the `sentencepiece`
package tokenize a generated corpus; kldq must produce the same ids.

Usage: tok_oracle.py --data ../shared/data --workdir W
Writes into W:
  corpus.jsonl                  {"text": ...} for every test string (>= 5,000, seeded)
  <case>/tokenizer.json|model   the tokenizer files of each case
  <case>.jsonl                  per string: {"ids": [...], "decoded": ..., "normalized": ...}
  wikitext_qwen.json            ids of the whole WikiText-2 raw test file, Qwen tokenizer
Cases: qwen (the real Qwen tokenizer.json), llama3 (the same vocabulary with the Llama-3 split
regex, ignore_merges, Llama-3's Sequence post-processor and added tokens that are normalized,
single_word, or prefixes of each other), gpt2 (the same vocabulary with ByteLevel's built-in GPT-2 regex), misc
(the same vocabulary behind NFKC, a regex Replace, a literal Split, Digits and ByteLevel with a
prefix space), stories-bpe (stories260K's byte-fallback tokenizer.json), stories-meta (the same
with Metaspace pre-tokenizer and decoder, and a normalized added token), stories-sp (its sentencepiece tokenizer.model with
tokenizer_config.json's add_bos_token).
"""
import argparse, json, os, random, shutil, unicodedata

from tokenizers import Tokenizer, normalizers

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

SCRIPTS = {  # inclusive code point ranges of letters per script
    "latin": [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xFF), (0x100, 0x17F)],
    "greek": [(0x391, 0x3A9), (0x3B1, 0x3C9), (0x1F00, 0x1F15)],
    "cyrillic": [(0x410, 0x44F), (0x400, 0x40F)],
    "arabic": [(0x621, 0x64A), (0x660, 0x669), (0x64B, 0x652)],
    "hebrew": [(0x5D0, 0x5EA), (0x5B0, 0x5BD)],
    "devanagari": [(0x905, 0x939), (0x93E, 0x94D), (0x966, 0x96F)],
    "thai": [(0xE01, 0xE2E), (0xE30, 0xE3A), (0xE50, 0xE59)],
    "cjk": [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xFF01, 0xFF5E)],
    "hangul": [(0xAC00, 0xD7A3), (0x1100, 0x1112), (0x3131, 0x318E)],
}
EMOJI = ["👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸", "🇯🇵", "1️⃣", "❤️", "🧑🏿‍💻", "😀", "🤖", "👩🏻‍🦰", "✋🏼", "🫠"]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "const y = arr.map((v) => v * 2).filter(Boolean);\r\n",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; }",
    "x = {'a': [1, 2.5e-3, None], \"b\": True}",
    "    if (err != nil) {\n        return fmt.Errorf(\"bad: %w\", err)\n    }",
    "$ ./run.sh --flag=1 2>&1 | tee log.txt",
]
WORDS = ["the", "The", "THE", "don't", "DON'T", "we've", "WE'VE", "they'll", "She'S", "I'M", "you'Re",
         "it'd", "ſtate", "naïve", "café", "Zürich", "co-op", "e-mail", "U.S.A.", "$100", "3.14159",
         "100,000", "2024-11-23", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n", " \n", "\u3000", "\xa0", "\u2028", "\x0b", "\x0c", "\x85", "   \t "]


def script_word(rng, name):
    lo, hi = rng.choice(SCRIPTS[name])
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))


def corpus(data, rng):
    out = [""]
    with open(os.path.join(data, "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n")]
    for l in rng.sample(lines, 1500):
        out.append(l)
    for i in range(300):  # multi-line chunks, newlines and headings included
        s = rng.randrange(len(lines) - 5)
        out.append("\n".join(lines[s:s + rng.randint(2, 5)]))
    for c in CODE:
        out += [c, c.replace("    ", "\t"), c.upper()]
    for name in SCRIPTS:
        for _ in range(220):
            words = [script_word(rng, name) for _ in range(rng.randint(1, 6))]
            sep = [rng.choice([" ", " ", ", ", ". ", "\n", "", "-"]) for _ in words]
            out.append("".join(w + s for w, s in zip(words, sep)))
    for _ in range(300):
        out.append(" ".join(rng.choice(EMOJI + WORDS) for _ in range(rng.randint(1, 6))))
        out.append("".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4))))
    for _ in range(400):  # NFD input: decomposed accents
        w = " ".join(script_word(rng, rng.choice(["latin", "greek", "cyrillic", "hangul"])) for _ in range(3))
        out.append(unicodedata.normalize("NFD", w))
    for _ in range(400):  # whitespace runs
        out.append("".join(rng.choice(SPACES) + rng.choice(WORDS + [""]) for _ in range(rng.randint(1, 8))))
    for _ in range(300):  # digits
        out.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 60))))
        out.append(f"{rng.randint(0, 10**9)} apples and {rng.random()*1000:.3f} pears")
    for _ in range(300):  # contractions in any case, special tokens inside text
        w = rng.choice(WORDS)
        out.append(f"{w}{rng.choice(['', ' '])}{rng.choice(WORDS)}{rng.choice(['', '!', '?!', '...'])}")
    for _ in range(500):  # random code points anywhere in Unicode (no surrogates)
        cps = []
        for _ in range(rng.randint(1, 12)):
            c = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xD7FF),
                            rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x1FAFF), rng.randint(0x20000, 0x2A6DF)])
            cps.append(chr(c))
        out.append("".join(cps))
    # Normalization edge cases: marks and composition pairs newer than the Unicode 9.0 that the
    # tokenizers library normalizes with; every mark up to U+2FFFF between two references.
    out += ["\u0c3c\u0334", "\U00011935\U00011930", "\U00011382\U000113c9", "\u32ff", "\ua7f2 x"]
    marks = [chr(c) for c in range(0x300, 0x30000) if unicodedata.combining(chr(c)) or unicodedata.decomposition(chr(c))]
    out += ["a" + "".join(marks[i:i + 48]) + "\u0301\u0316e" for i in range(0, len(marks), 48)]
    # Added tokens: normalized ones, single_word ones, one that is a prefix of another.
    out += ["foo bar", "x foo bar", " Caf\u00e9 x", "e\u0301t\u00e9 z", "wqzx\u0301", "wqzx\u00b2", "qzvkd",
            "a wqzx b", "qzvk", "<|im_start|>qzv", "wqzx_1", "(wqzx)", "e\u0301t\u00e9wqzx"]
    big_words = [rng.choice(lines[:2000]).strip() or "word" for _ in range(20000)]
    out.append(" ".join(big_words)[:100_000].replace("\n", " "))  # a 100 KB single line
    return out


def write_cases(data, work, texts):
    qwen = os.path.join(data, "qwen-tokenizer", "tokenizer.json")
    with open(qwen, encoding="utf-8") as f:
        base = json.load(f)
    llama3 = json.loads(json.dumps(base))
    llama3["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = LLAMA3_REGEX
    llama3["model"]["ignore_merges"] = True
    # Llama-3's post-processor: ByteLevel then a BOS template, as a Sequence.
    llama3["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                                                   {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [], "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643],
                                                         "tokens": ["<|endoftext|>"]}}}]}
    # Added tokens with every matching rule on top of the real Qwen tokens.
    next_id = max(t["id"] for t in base["added_tokens"]) + 1
    for content, normalized, single in [("e\u0301t\u00e9", True, False), ("wqzx", False, True),
                                        ("qzv", False, False), ("qzvk", False, True)]:
        llama3["added_tokens"].append({"id": next_id, "content": content, "single_word": single, "lstrip": False,
                                       "rstrip": False, "normalized": normalized, "special": False})
        next_id += 1
    gpt2 = json.loads(json.dumps(base))
    gpt2["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    # Other components on the same vocabulary: NFKC, a regex Replace, a literal Split merged with
    # the next piece, individual digits, ByteLevel with a prefix space and no regex.
    misc = json.loads(json.dumps(base))
    misc["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]}
    misc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}
    stories = os.path.join(data, "models", "stories260k-llama")
    with open(os.path.join(stories, "tokenizer.json"), encoding="utf-8") as f:
        meta = json.load(f)
    # Llama-2 tokenizers in the non-legacy layout: Metaspace instead of Prepend/Replace.
    meta["added_tokens"].append({"id": 512, "content": "foo bar", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": True, "special": False})
    meta["normalizer"] = None
    meta["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    meta["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    for name, doc in [("qwen", base), ("llama3", llama3), ("gpt2", gpt2), ("misc", misc), ("stories-meta", meta)]:
        os.makedirs(os.path.join(work, name), exist_ok=True)
        with open(os.path.join(work, name, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
    os.makedirs(os.path.join(work, "stories-bpe"), exist_ok=True)
    shutil.copy(os.path.join(stories, "tokenizer.json"), os.path.join(work, "stories-bpe"))
    os.makedirs(os.path.join(work, "stories-sp"), exist_ok=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(stories, f), os.path.join(work, "stories-sp"))

    for name in ("qwen", "llama3", "gpt2", "misc", "stories-bpe", "stories-meta"):
        tok = Tokenizer.from_file(os.path.join(work, name, "tokenizer.json"))
        with open(os.path.join(work, name + ".jsonl"), "w", encoding="utf-8") as f:
            for t in texts:
                ids = tok.encode(t).ids
                row = {"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)}
                if tok.normalizer is not None:
                    row["normalized"] = tok.normalizer.normalize_str(t)
                if name == "qwen":
                    row["nfkc"] = normalizers.NFKC().normalize_str(t)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(work, "stories-sp", "tokenizer.model"))
    with open(os.path.join(work, "stories-sp.jsonl"), "w", encoding="utf-8") as f:
        for t in texts:  # add_bos_token is true in stories260K's tokenizer_config.json
            ids = [sp.bos_id()] + sp.encode(t)
            f.write(json.dumps({"ids": ids, "decoded": sp.decode(ids)}, ensure_ascii=False) + "\n")
    tok = Tokenizer.from_file(os.path.join(work, "qwen", "tokenizer.json"))
    with open(os.path.join(data, "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        wiki = tok.encode(f.read()).ids
    with open(os.path.join(work, "wikitext_qwen.json"), "w") as f:
        json.dump(wiki, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    texts = corpus(a.data, random.Random(1234))
    with open(os.path.join(a.workdir, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    write_cases(a.data, a.workdir, texts)
    print(len(texts))


if __name__ == "__main__":
    main()
