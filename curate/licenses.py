"""Whether the license a recipe declares for its output can hold, given its inputs' licenses and
the teacher's terms, and which license the dataset card should then state.

The rules (for the licenses ids the Hub lists, https://huggingface.co/docs/hub/repositories-licenses):
- Non-commercial inputs make the output non-commercial: CC BY-NC 4.0 grants use "for
  NonCommercial purposes only" (§2(a)(1)), and the output holds that material.
- Share-alike and model terms propagate: an adaptation of CC BY-SA 4.0 material must be shared
  under CC BY-SA (§3(b)(1)); ODbL (§4.4), CDLA-Sharing and GPL likewise; the Llama community
  licenses require a copy of the agreement with any derivative work (Llama 3.1 license §1.b.i), the
  Gemma terms and the OpenRAIL licenses require their use restrictions to be passed on. So the
  output must carry that same license, and two different ones cannot both hold (nor one of them
  together with a non-commercial input, unless it is itself non-commercial: CC BY-NC-SA).
- No-derivatives (ND) inputs may not be adapted at all.
- Permissive and attribution licenses (Apache-2.0, MIT, BSD, CC0, CC BY, ODC-By) allow any
  output license; their attribution is the card's inputs table.
- A license not in the table, `other`, or none stated cannot be checked: the run warns.

`check_licenses` gives the card's license: the declared one when it holds; else the one the inputs
require (e.g. cc-by-nc-4.0 for apache-2.0 declared over a cc-by-nc-4.0 input); else `other`, with
`license_name` and `license_details` as the Hub's card spec asks for a license it does not list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from curate.steps import Filter

if TYPE_CHECKING:
    from curate.recipe import Recipe


@dataclass(frozen=True)
class Terms:
    commercial: bool = True  # False: non-commercial use only
    propagates: bool = False  # derivatives must carry this same license
    derivatives: bool = True  # False: no adaptations (ND)
    rule: str = "permissive: any output license, with attribution"


_NC = "non-commercial: the output is non-commercial (CC BY-NC 4.0 §2(a)(1))"
_SA = "share-alike: the output must be under the same license (CC BY-SA 4.0 §3(b)(1))"
_NC_SA = "non-commercial and share-alike: the output must be under the same license"
_ND = "no derivatives: the data may not be adapted"
_LLAMA = "Llama community license: derivatives carry the agreement and 'Built with Llama' (§1.b.i)"
_RAIL = "OpenRAIL: its use restrictions must be passed on to derivatives"

LICENSES: dict[str, Terms] = {
    **{k: Terms() for k in ("apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "unlicense", "pddl",
                            "cdla-permissive-1.0", "cdla-permissive-2.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0",
                            "odc-by")},
    **{k: Terms(propagates=True, rule=_SA) for k in ("cc-by-sa-3.0", "cc-by-sa-4.0", "odbl", "cdla-sharing-1.0",
                                                      "gpl-3.0")},
    **{k: Terms(commercial=False, rule=_NC) for k in ("cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0")},
    **{k: Terms(commercial=False, propagates=True, rule=_NC_SA) for k in ("cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0")},
    **{k: Terms(derivatives=False, rule=_ND) for k in ("cc-by-nd-4.0",)},
    **{k: Terms(commercial=False, derivatives=False, rule=_ND) for k in ("cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0")},
    **{k: Terms(propagates=True, rule=_LLAMA) for k in ("llama2", "llama3", "llama3.1", "llama3.2", "llama3.3",
                                                         "llama4")},
    "gemma": Terms(propagates=True, rule="Gemma terms: their use restrictions pass on to derivatives (§3.1)"),
    **{k: Terms(propagates=True, rule=_RAIL) for k in ("openrail", "openrail++", "bigscience-openrail-m",
                                                        "creativeml-openrail-m", "bigcode-openrail-m")},
}
# Said of a teacher's outputs by its license, beyond what the table's rule covers.
OUTPUT_TERMS = {"llama3": "the Llama 3 license forbids using its outputs to improve any other LLM than Llama 3 "
                          "and its derivatives (§1.b.v)"}
NON_COMMERCIAL_DEFAULT = "cc-by-nc-4.0"
UNRESOLVED = "mixed-terms"  # license_name of a card whose inputs' licenses cannot all hold


@dataclass
class LicenseCheck:
    declared: str | None
    license: str  # what the card states
    warnings: list[str] = field(default_factory=list)
    details: str | None = None  # license_details when `license` is `other` for a conflict
    rules: dict[str, str] = field(default_factory=dict)  # license id -> the rule applied

    def as_dict(self) -> dict:
        return {"declared": self.declared, "license": self.license, "compatible": not self.warnings,
                "warnings": self.warnings, "details": self.details, "rules": self.rules}


def check_licenses(declared: str | None, sources: list[tuple[str, str | None]]) -> LicenseCheck:
    """`sources`: (what, license) for each input and the teacher, e.g. ("input data/x.jsonl",
    "cc-by-nc-4.0"); license None when the recipe states none."""
    declared_id = declared.strip().lower() if declared else None
    warnings, known = [], []
    for what, lic in sources:
        lic_id = lic.strip().lower() if lic else None
        if lic_id in LICENSES:
            known.append((what, lic_id, LICENSES[lic_id]))
        elif declared_id:  # a claim to check, and this source cannot be checked
            said = f"is under {lic!r}, which curate cannot check" if lic_id else "states no license"
            warnings.append(f"{what} {said}: read its terms before publishing under {declared}")
    rules = {lic: terms.rule for _, lic, terms in known if terms.rule != Terms().rule}
    for what, lic, _ in known:
        if lic in OUTPUT_TERMS and what.startswith("teacher"):
            warnings.append(f"{what}: {OUTPUT_TERMS[lic]}")

    def verdict(license: str, details: str | None = None) -> LicenseCheck:
        return LicenseCheck(declared, license, warnings, details, rules)

    conflict = _conflict(known)
    if conflict:
        warnings.append(conflict + "; the card says license: other")
        return verdict("other", conflict)
    need = _required(known, declared_id)
    if need is None or need == declared_id:
        return verdict(declared or "other")
    if declared_id:
        why = next(f"{what} is {lic} ({terms.rule})" for what, lic, terms in known
                   if lic == need or (need == NON_COMMERCIAL_DEFAULT and not terms.commercial))
        warnings.append(f"the recipe declares license {declared}, but {why}; the card says {need}")
    return verdict(need)


def _conflict(known: list[tuple[str, str, Terms]]) -> str | None:
    """Why no license can hold for these sources together, or None."""
    nd = [f"{what} ({lic})" for what, lic, terms in known if not terms.derivatives]
    if nd:
        return f"{', '.join(nd)} allow(s) no derivatives, so this data may not be made from them"
    carried = {lic: what for what, lic, terms in known if terms.propagates}
    if len(carried) > 1:
        return "; ".join(f"{what} requires its derivatives under {lic}" for lic, what in carried.items()) + \
            ": no one license satisfies them all"
    non_commercial = [(what, lic) for what, lic, terms in known if not terms.commercial]
    if carried and non_commercial:
        (lic, what), = carried.items()
        if LICENSES[lic].commercial:
            nc_what, nc_lic = non_commercial[0]
            return (f"{what} requires its derivatives under {lic}, which allows commercial use, while {nc_what} "
                    f"is {nc_lic} (non-commercial)")
    return None


def _required(known: list[tuple[str, str, Terms]], declared: str | None) -> str | None:
    """The license the output must carry, None when any will do. A declared license stricter than
    needed stands (non-commercial over permissive inputs is the author's choice)."""
    carried = [lic for _, lic, terms in known if terms.propagates]
    if carried:
        return carried[0]
    if any(not terms.commercial for _, _, terms in known):
        if declared in LICENSES and not LICENSES[declared].commercial:
            return declared
        return NON_COMMERCIAL_DEFAULT
    return None


def teacher_wrote_rows(recipe: Recipe) -> bool:
    """A step has the teacher write rows (a generator), not only score them (a judge)."""
    return any(step.needs_llm and not isinstance(step, Filter) for step in recipe.steps)


def recipe_licenses(recipe: Recipe) -> LicenseCheck:
    """`check_licenses` for a recipe: its declared license, its inputs' and, where a teacher wrote
    rows, the teacher's (the embedded one's are known: SmolLM2-135M-Instruct is Apache-2.0)."""
    cfg = recipe.config
    raw_inputs = recipe.raw.get("inputs") or []  # as written: no machine-specific paths in messages
    sources = [(f"input {raw.get('path', inp.path) if isinstance(raw, dict) else inp.path}", inp.license)
               for raw, inp in zip(raw_inputs, cfg.inputs)]
    if teacher_wrote_rows(recipe):
        t = cfg.teacher
        embedded = t.backend == "embedded" and not t.model_path
        sources.append((f"teacher {t.model or t.backend}", t.license or ("apache-2.0" if embedded else None)))
    return check_licenses(cfg.license, sources)
