"""Token log-probs with transformers on CPU (or any torch device): the second in-process scorer.

The contract and the alignment rules are in `curate.llm.scoring`: context and target are tokenized
separately and concatenated, no BOS is added, row i of the logits predicts token i+1, and a target
with no context loses its first token.

Why a second backend: it runs the full-precision (dequantized) weights, batches with padding and an
attention mask, and is the path to HF-format models and GPUs. The embedded GGUF is Q4_1, so this
scorer and llama.cpp (which keeps the quantized weights) agree to about 0.1 nat per token, not
exactly.

A .gguf model (the default: the embedded one) is loaded from its HF folder made by
`curate.llm.hf_model.hf_model_dir` (converted once and cached, shared with the vLLM backend):
transformers would otherwise parse the GGUF in pure Python on every load (~45 s for the 93 MB
embedded model).
"""

from __future__ import annotations

import threading
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from curate.errors import require
from curate.llm.hf_model import hf_model_dir
from curate.llm.scoring import Scorer, Stop, in_groups

_LOADED: dict[tuple, tuple] = {}
_LOAD_LOCK = threading.Lock()


def _torch():
    return require("torch", extra="hf")


def load_transformers(model_path: str | Path | None = None, dtype: str = "float32"):
    """(model, tokenizer), loaded once per process. `model_path`: an HF model folder or a .gguf file;
    default the embedded SmolLM2-135M-Instruct GGUF."""
    torch = _torch()
    transformers = require("transformers", extra="hf")
    if model_path is None:
        from curate.llm.embedded import embedded_model_path

        model_path = embedded_model_path()
    path = Path(model_path)
    key = (str(path.resolve()), dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            # A GGUF goes through its converted float32 HF folder; `dtype` applies when loading it.
            folder = hf_model_dir(path) if path.suffix == ".gguf" else path
            tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
            model.eval()
            _LOADED[key] = (model, tok)
        return _LOADED[key]


class TransformersScorer(Scorer):
    """Per-token log p(target | context) with a transformers causal LM, batched.

    Batches are formed from items sorted by length (little padding), right-padded with an attention
    mask, and limited to `max_batch_tokens` padded tokens. The vocabulary projection runs only on
    the rows that predict target tokens (for a 135M model it is ~20% of the weights). A shared
    prefix is simply part of each sequence (no KV reuse: on CPU batching the full sequences costs
    about the same as re-expanding a cache).
    """

    name = "transformers"
    can_embed = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_length: int = 2048,
        max_batch_tokens: int = 4096,
        max_batch_size: int = 16,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        model, tokenizer = load_transformers(model_path, dtype)
        self._setup(model, tokenizer, max_length, max_batch_tokens, max_batch_size, device)

    @classmethod
    def from_model(cls, model, tokenizer, max_length: int = 2048, max_batch_tokens: int = 4096,
                   max_batch_size: int = 16, device: str = "cpu") -> "TransformersScorer":
        """Wrap an already loaded causal LM and its tokenizer (e.g. a fine-tuned model in memory)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, max_length, max_batch_tokens, max_batch_size, device)
        return self

    def _setup(self, model, tokenizer, max_length, max_batch_tokens, max_batch_size, device) -> None:
        self.torch = _torch()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = device
        if device != "cpu":
            self.model.to(device)
        self.n_ctx = max_length
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.chat_template = getattr(self.tokenizer, "chat_template", None)
        self.special_tokens = {k: v for k in ("bos_token", "eos_token") if isinstance(v := getattr(tokenizer, k, None), str)}
        # Project only the scored rows onto the vocabulary when the model is body + plain linear head
        # (llama, qwen2, mistral, ...); otherwise (e.g. logit soft-capping) run the full forward.
        self._body = getattr(self.model, getattr(self.model, "base_model_prefix", "model"), None)
        self._head = self.model.get_output_embeddings()
        if self._body is None or self._head is None or getattr(self.model.config, "final_logit_softcapping", None):
            self._head = None
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def target_logprobs(
        self, prefix: list[int], pairs: list[tuple[list[int], list[int]]], parallel: int, stop: Stop | None
    ) -> list[np.ndarray]:
        def run(group: list) -> list[np.ndarray]:
            return self._score_sequences([(prefix + c + t, len(prefix) + len(c)) for c, t in group])

        return in_groups(run, pairs, parallel, stop)

    def _score_sequences(self, items: list[tuple[list[int], int]]) -> list[np.ndarray]:
        """For each (ids, start): log-probs of ids[start:], each given every token before it."""
        out: list[np.ndarray | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        batch: list[int] = []
        with self._lock:
            for i in order:
                n = max(len(items[i][0]), 1)
                if batch and (len(batch) + 1 > self.max_batch_size or (len(batch) + 1) * n > self.max_batch_tokens):
                    self._run_batch(items, batch, out)
                    batch = []
                batch.append(i)
            if batch:
                self._run_batch(items, batch, out)
        return out  # type: ignore[return-value]

    def embed(self, texts: Sequence[str], max_tokens: int = 512) -> np.ndarray:
        """Mean-pooled last hidden state of each text (first `max_tokens` tokens), float32 (n, d)."""
        torch = self.torch
        vectors = []
        with self._lock, torch.inference_mode():
            for text in texts:
                ids = self.tokenize(text)[:max_tokens] or [self.tokenizer.eos_token_id or 0]
                hidden = self.model.base_model(input_ids=torch.tensor([ids], device=self.device), use_cache=False).last_hidden_state
                vectors.append(hidden[0].float().mean(dim=0).cpu().numpy())
        return np.stack(vectors) if vectors else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)

    def _run_batch(self, items, batch: list[int], out: list) -> None:
        torch = self.torch
        width = max(len(items[i][0]) for i in batch)
        if width == 0:
            for i in batch:
                out[i] = np.zeros(0)
            return
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows_b, rows_t, targets, spans = [], [], [], []
        for b, i in enumerate(batch):
            seq, start = items[i]
            n = len(seq)
            if n:
                ids[b, :n] = torch.tensor(list(seq), dtype=torch.long)
                mask[b, :n] = 1
            first = max(start, 1)
            k = max(n - first, 0)
            spans.append(k)
            # row t predicts token t+1: target token j is read from row j-1
            rows_b.extend([b] * k)
            rows_t.extend(range(first - 1, n - 1))
            targets.extend(seq[first:])
        if not targets:
            for i in batch:
                out[i] = np.zeros(0)
            return
        with torch.inference_mode():
            ids, mask = ids.to(self.device), mask.to(self.device)
            sel = (torch.tensor(rows_b), torch.tensor(rows_t))
            if self._head is not None:
                hidden = self._body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                logits = self._head(hidden[sel]).float()
            else:
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[sel].float()
            logp = torch.log_softmax(logits, dim=-1)
            tgt = torch.tensor(targets, device=logp.device)
            lp = logp.gather(1, tgt[:, None])[:, 0].double().cpu().numpy()
        pos = 0
        for i, k in zip(batch, spans):
            out[i] = lp[pos : pos + k]
            pos += k
