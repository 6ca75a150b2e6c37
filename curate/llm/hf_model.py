"""A GGUF model as a Hugging Face folder (safetensors + config + tokenizer), converted once and cached.

Why: vLLM (and any HF-format tool) loads an HF folder; the embedded teacher ships only as a GGUF
(SmolLM2-135M-Instruct, Q4_1). transformers can read a GGUF (`from_pretrained(dir, gguf_file=...)`,
which dequantizes to float32) but cannot write one back out: `save_pretrained` refuses a
GGUF-loaded model. So the state dict goes to safetensors by hand, and the config is cleaned of the
GGUF `quantization_config` (vLLM would try to load the folder as GGUF otherwise) and given
`architectures`, which vLLM needs to pick a model class.

Numbers: the weights are the dequantized Q4_1 values, not the original full-precision model, so
the folder's log-probs match llama.cpp's on the GGUF to about 0.1 nat per token, not exactly.

Cache: `~/.cache/curate/hf/<gguf stem>-<key>/` (`$CURATE_CACHE_DIR/hf/...` when that is set). The key
hashes the file's size and its first and last MiB (the GGUF header holds the model's name,
quantization and tensor layout), plus a format version of this converter; hashing all of a
multi-GB file on every run would cost more than it protects. The folder is written under a temp
name and renamed, so a crashed or concurrent conversion never leaves a half-written folder that a
later run would pick up. Converting the embedded model takes ~1-2 min on 2 cores (transformers
parses the GGUF in pure Python); every later call returns the folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from curate.errors import require

FORMAT_VERSION = 2  # bump when the folder layout changes: old folders are then not reused (2: pre-tokenizer)
_MIB = 1 << 20
_LOCK = threading.Lock()


def cache_root() -> Path:
    base = os.environ.get("CURATE_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "curate") / "hf"


def gguf_key(gguf: str | Path) -> str:
    """A short content key: size + first and last MiB + converter version (see the module doc)."""
    path = Path(gguf)
    size = path.stat().st_size
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{size}|".encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if size > _MIB:
            f.seek(max(size - _MIB, _MIB))
            h.update(f.read(_MIB))
    return h.hexdigest()[:12]


def converted_dir(gguf: str | Path) -> Path:
    """Where the HF folder for this GGUF lives (it may not exist yet)."""
    path = Path(gguf)
    return cache_root() / f"{path.stem}-{gguf_key(path)}"


def is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() and (
        folder / "curate-source.json"
    ).is_file()


def hf_model_dir(gguf: str | Path | None = None, dtype: str = "float32") -> Path:
    """The HF folder of `gguf` (default: the embedded model), converting it on first use.

    Idempotent and safe to call from several processes: the first finished conversion wins the
    rename, the others discard their copy.
    """
    if gguf is None:
        from curate.llm.embedded import embedded_model_path

        gguf = embedded_model_path()
    gguf = Path(gguf)
    dest = converted_dir(gguf)
    if is_complete(dest):
        return dest
    with _LOCK:
        if not is_complete(dest):
            convert_gguf(gguf, dest, dtype=dtype)
    return dest


def restore_pre_tokenizer(tok, gguf: Path) -> None:
    """Give `tok` the pre-tokenizer the GGUF names, where transformers' GGUF loader does not.

    transformers 5 rebuilds llama.cpp's pre-tokenizer types it knows (llama-bpe, qwen2, ...) and
    splits every other BPE vocabulary as GPT-2 does. SmolLM's ("smollm") first isolates each digit,
    as llama.cpp and the model's own tokenizer.json do; without it, a blank line before a digit
    ("\\n\\n1. ...", every numbered list) became "\\n", "\\n" instead of the one token "\\n\\n" the
    model was trained on, and the transformers and vLLM scorers scored other tokens than llama.cpp.
    """
    from gguf import GGUFReader
    from tokenizers import pre_tokenizers

    field = GGUFReader(str(gguf)).get_field("tokenizer.ggml.pre")
    if field is not None and field.contents() == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
        )


def convert_gguf(gguf: str | Path, dest: str | Path, dtype: str = "float32") -> Path:
    """Dequantize `gguf` with transformers and write an HF folder at `dest` (atomically)."""
    gguf, dest = Path(gguf), Path(dest)
    torch = require("torch", extra="hf")
    transformers = require("transformers", extra="hf")
    require("gguf", extra="hf")
    st = require("safetensors.torch", extra="hf", package="safetensors")

    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    restore_pre_tokenizer(tok, gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
    )
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    # Tied embeddings: keep model.embed_tokens.weight (a file holding only lm_head.weight loads as
    # random/uniform logits) and drop the duplicate lm_head, which loaders re-tie.
    state = {
        k: v.detach().to(getattr(torch, dtype)).contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")
    }
    cfg = config.to_diff_dict()  # only what differs from the class defaults (no id2label noise)
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]  # e.g. LlamaForCausalLM; GGUF loads leave it None
    cfg["dtype"] = cfg["torch_dtype"] = dtype  # transformers 5 reads `dtype`, older readers `torch_dtype`
    cfg.pop("_name_or_path", None)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        st.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # Written last: its presence marks a complete folder.
        (tmp / "curate-source.json").write_text(
            json.dumps(
                {"gguf": str(gguf.resolve()), "key": gguf_key(gguf), "dtype": dtype, "format": FORMAT_VERSION,
                 "note": "dequantized from the GGUF by curate.llm.hf_model"},
                indent=2,
            )
        )
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            tmp.rename(dest)
        except OSError:  # another process renamed its copy first (or a stale incomplete folder is there)
            if is_complete(dest):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(dest, ignore_errors=True)
                tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
