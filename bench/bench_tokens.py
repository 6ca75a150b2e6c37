"""The shipped token counter against llama.cpp: equal counts, and the speed of each.

curate/tokens.py counts tokens with the `tokenizers` library (a core dependency) on SmolLM2-135M-
Instruct's tokenizer, shipped in curate/data/ and derived from the embedded model's GGUF: its
vocabulary, merges and special tokens, and the pre-tokenizer llama.cpp applies for this model
("smollm": each digit alone, then GPT-2's byte-level split). This script

  python bench/bench_tokens.py            checks that the shipped file is the one the GGUF gives now,
                                          counts every string of every dataset in /work/shared/data
                                          (--data DIR) and --fuzz random strings (special tokens,
                                          digits, whitespace runs, CJK, emoji, combining marks) with
                                          both tokenizers, and prints the strings whose counts differ
                                          and the throughput of each, as a ratio
  python bench/bench_tokens.py --write    rebuilds the shipped file from the GGUF

Needs the `embedded` extra (the GGUF, and llama.cpp to compare with) and `gguf` (the `hf` extra).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.llm.embedded import embedded_model_path, load_tokenizer  # noqa: E402
from curate.tokens import DEFAULT_FILE, token_counter  # noqa: E402

DATA = Path("/work/shared/data")
CONTROL, USER_DEFINED = 3, 4  # GGUF token types that are matched whole in text (special=True in llama.cpp)


def tokenizer_json_from_gguf(gguf: Path) -> str:
    """The tokenizer.json (compact) of a GGUF whose tokenizer is GPT-2 BPE with the "smollm" pre-tokenizer."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    fields = GGUFReader(gguf).fields
    get = lambda key: fields[key].contents()  # noqa: E731
    if (get("tokenizer.ggml.model"), get("tokenizer.ggml.pre")) != ("gpt2", "smollm"):
        raise SystemExit(f"{gguf}: tokenizer {get('tokenizer.ggml.model')}/{get('tokenizer.ggml.pre')}, not gpt2/smollm")
    tokens, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ")) for m in get("tokenizer.ggml.merges")]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind in (CONTROL, USER_DEFINED)])
    return tok.to_str()


def dataset_strings(root: Path) -> dict[str, list[str]]:
    """Every string value of every record of every jsonl file under root, per file."""
    def strings(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)

    out = {}
    for path in sorted(root.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            out[str(path.relative_to(root))] = [s for line in f if line.strip() for s in strings(json.loads(line))]
    return out


def fuzz_strings(n: int, seed: int = 0) -> list[str]:
    pieces = list("abcXYZ '\"sStTdDmM.,;:!?-_()[]{}<>|/\\@#$%^&*+=~`0123456789\t\n\r  ") + [
        "'s", "'ll", "'RE", "é", "ñ", "ß", "日本語", "中文", "한국어", "😀", "👍🏽", "🇫🇷", "مرحبا", "привет",
        "\u0301", "\u200b", "\xa0", "\u3000", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<im_start>", "١٢٣",
        "²", "½", "Ⅻ", "   ", "\n\n", " \n", "\r\n", "ﬁ", "𝔘"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help=f"rebuild {DEFAULT_FILE} from the GGUF")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--fuzz", type=int, default=30000)
    args = ap.parse_args()

    derived = tokenizer_json_from_gguf(embedded_model_path())
    if args.write:
        DEFAULT_FILE.write_bytes(gzip.compress(derived.encode(), compresslevel=9, mtime=0))
        print(f"wrote {DEFAULT_FILE} ({DEFAULT_FILE.stat().st_size} bytes)")
        return
    shipped = gzip.decompress(DEFAULT_FILE.read_bytes()).decode()
    print(f"shipped file is the one derived from the GGUF now: {json.loads(shipped) == json.loads(derived)}")

    print(f"load average {os.getloadavg()[0]:.2f}")
    counter, llama = token_counter(), load_tokenizer()
    groups = {**dataset_strings(args.data), f"fuzz ({args.fuzz} random strings)": fuzz_strings(args.fuzz)}
    texts = tokens = differ = 0
    ours_s = llama_s = 0.0
    for name, strings in groups.items():
        t0 = time.perf_counter()
        ours = counter.count(strings)
        t1 = time.perf_counter()
        theirs = [len(llama.tokenize(s.encode("utf-8"), add_bos=False, special=True)) if s else 0 for s in strings]
        t2 = time.perf_counter()
        bad = [(s, a, b) for s, a, b in zip(strings, ours.tolist(), theirs) if a != b]
        texts, tokens, differ = texts + len(strings), tokens + sum(theirs), differ + len(bad)
        ours_s, llama_s = ours_s + t1 - t0, llama_s + t2 - t1
        print(f"{name}: {len(strings)} strings, {sum(theirs)} tokens, {len(bad)} differ")
        for s, a, b in bad[:3]:
            print(f"    ours {a}, llama.cpp {b}: {s[:120]!r}")
    print(f"total: {texts} strings, {tokens} tokens, {differ} with a different count")
    print(f"time: tokenizers {ours_s:.1f}s, llama.cpp (vocab only, one call per string) {llama_s:.1f}s; "
          f"llama.cpp / tokenizers = {llama_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
