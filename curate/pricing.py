"""What a teacher's tokens cost, and where that figure came from.

In order:
1. The recipe's `teacher.price` when it gives one ("recipe teacher.price"): it overrides the rest.
2. The embedded and vLLM backends run on this machine: $0, "local model"; so do batch files
   written to a folder (`teacher.batch.folder`) for a program of yours, such as vLLM's run_batch.
3. The openai backend is priced by the provider its requests go to (`api_base_url`), never by
   the model name alone:
   - a URL on this machine or its network (localhost, 127.0.0.0/8, ::1, private addresses, *.local)
     is a server of yours (vLLM, llama.cpp, SGLang): $0, "local model", even when it serves a
     model whose name a provider prices (a local `gpt-4o-mini` alias is not OpenAI's);
   - a URL that the price table knows (api.openai.com, api.anthropic.com, generativelanguage.
     googleapis.com, api.deepseek.com, openrouter.ai, api.together.xyz, ...) is priced from that
     provider's table, e.g. "genai-prices 0.2.3 (openai gpt-4o-mini)";
   - any other URL, or a model the provider's table lacks, is not priced: the cost counted is 0,
     the source says "unknown: cost not counted (...)" and the run warns; `teacher.price` prices it.

The table is genai-prices (pydantic's maintained price data, bundled in the package, no network at
run time). Compared on 2026-11-30 with tokencost 0.1.26 and llmprice-kit 2026.4.3 (both ship
LiteLLM's model_prices_and_context_window.json), model-prices 0.0.5 (models.dev) and llm-price
0.1.3 (README.md, "Prices" has the figures): it looks prices up by provider *and* API URL (what
rule 3 needs; the LiteLLM tables key on model names only), knows batch and cached-input prices, prices
the five reference models (gpt-4o-mini, gpt-4.1, claude-sonnet-4, gemini-2.5-flash, deepseek-chat)
and Qwen through providers that serve it (OpenRouter, Novita, Hugging Face's router, ...), depends
only on pydantic and httpx2, and was released this month.

Prices are per-token rates at the time of the lookup (DeepSeek's off-peak discount depends on the
hour); per-request tiers (Gemini Pro above 200k prompt tokens) are not applied: the base rate is.
"""

from __future__ import annotations

import ipaddress
import logging
from decimal import Decimal
from importlib.metadata import version
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from curate.llm.client import Price

if TYPE_CHECKING:
    from curate.llm.teacher import TeacherConfig

log = logging.getLogger(__name__)

RECIPE = "recipe teacher.price"
LOCAL = "local model"
# OpenAI, Anthropic and Google document their batch APIs at half the synchronous price; used when
# the table has no batch price for a model.
BATCH_DISCOUNT = 0.5
_PROBE_TOKENS = 1000  # priced to read a rate: below every per-request tier threshold in the table


def teacher_price(cfg: TeacherConfig, batch: bool = False) -> Price:
    """The price of the teacher `cfg` names, per million tokens; `batch=True` asks for the rate of
    a provider's batch API (the table's batch price, else BATCH_DISCOUNT of the standard rate)."""
    if "price" in cfg.model_fields_set:
        price = Price(cfg.price.input_per_mtok, cfg.price.output_per_mtok, RECIPE)
        return _halved(price) if batch else price
    if cfg.backend != "openai" or (cfg.batch is not None and cfg.batch.folder):
        return Price(0.0, 0.0, LOCAL)  # in-process, or batch files answered by a program of yours (run_batch)
    from curate.llm.openai_backend import api_base_url

    url = api_base_url(cfg.base_url)
    if is_local_url(url):
        return Price(0.0, 0.0, LOCAL)
    return table_price(cfg.model or "", url, batch)


def is_local_url(url: str) -> bool:
    """A server on this machine or its private network (what a vLLM or llama.cpp server is)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith((".localhost", ".local")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def table_price(model: str, url: str, batch: bool = False) -> Price:
    """`model`'s price at the provider serving `url`, from genai-prices; unknown (and 0) if the
    table has no provider for the URL or no such model there."""
    from genai_prices import Usage, calc_price
    from genai_prices.data_snapshot import get_snapshot

    table = f"genai-prices {version('genai-prices')}"
    try:
        provider = get_snapshot().find_provider(None, None, url)
    except LookupError:
        return unknown(f"{_redacted(url)} is not a provider that {table} knows")
    probe = Usage(input_tokens=_PROBE_TOKENS, output_tokens=_PROBE_TOKENS)
    try:
        found = calc_price(probe, model, provider_id=provider.id)
    except LookupError:
        return unknown(f"{table} has no price for {model!r} at {provider.id}")
    name = f"{found.provider.id} {found.model.id}"
    if not batch:
        return Price(_per_mtok(found.input_price), _per_mtok(found.output_price), f"{table} ({name})")
    cheaper = calc_price(probe, model, provider_id=provider.id, price_context={"processing": "batch"})
    if cheaper.total_price < found.total_price:
        return Price(_per_mtok(cheaper.input_price), _per_mtok(cheaper.output_price), f"{table} ({name}, batch)")
    standard = Price(_per_mtok(found.input_price), _per_mtok(found.output_price), f"{table} ({name})")
    return _halved(standard, "the table has no batch price")


def unknown(why: str) -> Price:
    return Price(0.0, 0.0, f"unknown: cost not counted ({why}; set teacher.price to count it)", known=False)


def _halved(price: Price, why: str = "") -> Price:
    note = f", batch at {BATCH_DISCOUNT:.0%}" + (f" ({why})" if why else "")
    return Price(price.input_per_mtok * BATCH_DISCOUNT, price.output_per_mtok * BATCH_DISCOUNT, price.source + note,
                 price.known)


def _per_mtok(amount: Decimal) -> float:
    return float(amount * Decimal(1_000_000) / _PROBE_TOKENS)


def _redacted(url: str) -> str:
    """The URL as shown in a report: scheme, host and path, never credentials or a query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
