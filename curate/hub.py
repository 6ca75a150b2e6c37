"""Publishing a finished run to the Hugging Face Hub as a dataset repository.

What goes up: the data files, the dataset card (README.md, whose YAML names the splits), the
recipe, the reports, the rejects table and the great-expectations suite and results. Step folders
and the response cache stay local. The token comes from the environment (HF_TOKEN) or the huggingface_hub login, never from the recipe.
A run whose data failed validation under `validate.fail_on_error: true` is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from curate.errors import CurateError
from curate.folder import require_complete

log = logging.getLogger(__name__)

# gx/: the great-expectations suite and its results (not the validated table, which the Hub would show as data)
UPLOAD = ["data/*", "README.md", "recipe.yaml", "report.json", "report.md", "report.html", "rejects.parquet",
          "gx/*.json"]


def publish(out: str | Path, repo: str, private: bool = False, api=None, message: str | None = None) -> str:
    """Create the dataset repo (if needed) and upload the run; returns the repo URL."""
    out = Path(out)
    for required in ("README.md", "data"):
        if not (out / required).exists():
            raise CurateError(f"{out}: not a finished run folder (no {required}); run `curate run` first")
    require_complete(out, "publish it")  # a killed run's folder may hold files of two runs
    refuse_failed_validation(out)
    if "/" not in repo:
        raise CurateError(f"--repo must be 'owner/name', got {repo!r}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(out), repo_type="dataset", allow_patterns=UPLOAD,
                      commit_message=message or f"Upload {out.name} with curate")
    return str(url)


def refuse_failed_validation(out: Path) -> None:
    """A run whose data failed a critical expectation under `validate.fail_on_error: true` is not
    published (its folder is finished: the data and report are there to look at); failed
    expectations without fail_on_error are a warning."""
    try:
        v = json.loads((out / "report.json").read_text(encoding="utf-8")).get("validation") or {}
    except (OSError, ValueError, AttributeError):
        return  # an older or hand-made folder: nothing recorded to go by
    failed = [r["expectation"] for r in v.get("results", []) if not r.get("success")]
    if v.get("fails_run"):
        raise CurateError(f"{out}: cannot publish it: its data failed {len(failed)} expectation(s) and its recipe has "
                          f"validate.fail_on_error: true ({'; '.join(failed)}); see {out / 'report.md'}. Fix the data "
                          "and rerun, or rerun with -o validate.fail_on_error=false to publish it as it is")
    if failed:
        log.warning("%s: publishing data that failed %d expectation(s): %s", out, len(failed), "; ".join(failed))
