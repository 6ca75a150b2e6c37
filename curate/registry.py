"""Step kinds a recipe can name, mapped to where they live (imported only when used).

Adding a filter or generator: write its module, then add one line here.
"""

from __future__ import annotations

import importlib

from curate.errors import CurateError

STEPS: dict[str, str] = {
    # generators
    "responses": "synth.responses:Responses",
    "structured": "synth.structured:Structured",
    "best_of_n": "synth.best_of_n:BestOfN",
    "evol_instruct": "synth.evol_instruct:EvolInstruct",
    "backtranslation": "synth.backtranslation:Backtranslation",
    "magpie": "synth.magpie:Magpie",
    "self_instruct": "synth.self_instruct:SelfInstruct",
    "verified_cot": "synth.cot:VerifiedCoT",
    # mixing
    "mix": "curate.mix:Mix",
    # filters
    "heuristics": "filters.heuristics:Heuristics",
    "exact_dedup": "filters.dedup:ExactDedup",
    "minhash_dedup": "filters.dedup:MinHashDedup",
    "judge": "filters.judge:Judge",
    "perplexity": "filters.perplexity:Perplexity",
    "ifd": "filters.ifd:IFD",
    "nuggets": "filters.nuggets:Nuggets",
    "decontaminate": "filters.decontaminate:Decontaminate",
    "fasttext": "filters.fasttext_filter:FastTextClassifier",
    "language_id": "filters.fasttext_filter:LanguageID",
    "diversity": "filters.diversity:Diversity",
}


def step_class(kind: str):
    if kind not in STEPS:
        raise CurateError(f"unknown step {kind!r}; known steps: {', '.join(sorted(STEPS))}")
    module, name = STEPS[kind].split(":")
    return getattr(importlib.import_module(module), name)
