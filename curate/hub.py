"""Publishing a finished run to the Hugging Face Hub as a dataset repository.

What goes up: the data files, the dataset card (README.md, whose YAML names the splits), the
recipe, the reports and the rejects table. Step folders and the response cache stay local. The
token comes from the environment (HF_TOKEN) or the huggingface_hub login, never from the recipe.
"""

from __future__ import annotations

from pathlib import Path

from curate.errors import CurateError
from curate.folder import require_complete

UPLOAD = ["data/*", "README.md", "recipe.yaml", "report.json", "report.md", "report.html", "rejects.parquet"]


def publish(out: str | Path, repo: str, private: bool = False, api=None, message: str | None = None) -> str:
    """Create the dataset repo (if needed) and upload the run; returns the repo URL."""
    out = Path(out)
    for required in ("README.md", "data"):
        if not (out / required).exists():
            raise CurateError(f"{out}: not a finished run folder (no {required}); run `curate run` first")
    require_complete(out, "publish it")  # a killed run's folder may hold files of two runs
    if "/" not in repo:
        raise CurateError(f"--repo must be 'owner/name', got {repo!r}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(out), repo_type="dataset", allow_patterns=UPLOAD,
                      commit_message=message or f"Upload {out.name} with curate")
    return str(url)
