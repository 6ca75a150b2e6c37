"""How often the embedded model's answers follow a JSON schema, with generation held to the schema
(the llama.cpp grammar the `structured` step asks for) and without it (the same requests with the
schema shown in the prompt only).

    python bench/eval_structured.py [--samples 3 --max-tokens 200 --threads 1]

The `structured` step of recipes/structured.yaml (its quiz schema: question, answer, difficulty) on
the recipe's 12 topics, `--samples` answers each (seeds 0..samples-1); each condition's answers go
through the step's own parse, so the counts are the step's reject reasons. Also counted: answers
that hold the JSON inside a markdown code fence (the step takes JSON only). An evaluation: the two
conditions' times are printed only to show what the grammar costs, measured in one process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.io import read_records  # noqa: E402
from curate.llm import LLM  # noqa: E402
from curate.recipe import load_recipe  # noqa: E402
from curate.steps import Context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=3, help="answers per topic (seeds 0..samples-1)")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="CURATE_THREADS for the embedded model")
    args = ap.parse_args()
    if args.threads:
        os.environ["CURATE_THREADS"] = str(args.threads)
    from curate.llm.embedded import EmbeddedBackend

    recipe = load_recipe(ROOT / "recipes" / "structured.yaml")
    step = recipe.steps[0].model_copy(update={"n": args.samples, "max_tokens": args.max_tokens})
    rows = read_records(recipe.resolve(recipe.config.inputs[0].path))
    llm = LLM(EmbeddedBackend(), show_progress=False)
    ctx = Context(llm=llm, seed=0)
    asked = step.build_requests(rows, ctx)
    print(f"{asked.rows.height} topics x {args.samples} samples = {len(asked.requests)} requests per condition; "
          f"max_tokens={args.max_tokens}; load {os.getloadavg()[0]:.1f}")
    llm.generate(asked.requests[:1])  # load the model before timing
    table = []
    for name, requests in (("grammar from the schema", asked.requests),
                           ("schema in the prompt only", [replace(r, json_schema=None) for r in asked.requests])):
        started = time.perf_counter()
        responses, usage = llm.generate(requests)
        seconds = time.perf_counter() - started
        result = step.parse_batch(replace(asked, requests=requests), responses, ctx, usage)
        reasons = Counter(result.rejected["reason"].to_list())
        fenced = sum(1 for r in responses if (r.text or "").lstrip().startswith("```"))
        table.append((name, result.kept.height, reasons, fenced, usage.completion_tokens, seconds))
    n = len(asked.requests)
    print("\n| condition | valid (kept) | schema validation failed | unparseable output | truncated at max_tokens "
          "| in a code fence | completion tokens | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kept, reasons, fenced, tokens, seconds in table:
        print(f"| {name} | {kept}/{n} ({100 * kept / n:.0f}%) | {reasons['schema validation failed']} | "
              f"{reasons['unparseable output']} | {reasons['truncated at max_tokens']} | {fenced} | {tokens} | {seconds:.0f} |")
    other = sum(r for row in table for k, r in row[2].items() if k not in
                ("schema validation failed", "unparseable output", "truncated at max_tokens"))
    if other:
        print(f"other rejects: {[dict(row[2]) for row in table]}")


if __name__ == "__main__":
    main()
