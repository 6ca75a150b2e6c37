"""Teacher prices without typing them (issue 13 part 4): the recipe's `teacher.price` overrides;
otherwise genai-prices' table, looked up by the provider the requests go to; local servers cost $0;
an unknown provider is not priced and says so. The expected figures come from genai-prices itself
(its own `calc_price`), so a new table release does not break these tests."""

import json
import logging
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from curate.engine import run_recipe
from curate.pricing import BATCH_DISCOUNT, LOCAL, RECIPE, is_local_url, teacher_price
from curate.llm.teacher import TeacherConfig, build_llm
from curate.recipe import load_recipe
from tests.servers.fault_server import fault_server


def table(model: str, provider: str, **context) -> tuple[float, float]:
    """Per-million-token rates straight from genai-prices."""
    got = calc_price(Usage(input_tokens=1000, output_tokens=1000), model, provider_id=provider, **context)
    return float(got.input_price * Decimal(1000)), float(got.output_price * Decimal(1000))


def rates(price) -> tuple[float, float]:
    return pytest.approx(price.input_per_mtok), pytest.approx(price.output_per_mtok)


@pytest.mark.parametrize("model, base_url, provider", [
    ("gpt-4o-mini", None, "openai"),
    ("gpt-4.1", "https://api.openai.com/v1", "openai"),
    ("claude-sonnet-4-20250514", "https://api.anthropic.com/v1", "anthropic"),
    ("gemini-2.5-flash", "https://generativelanguage.googleapis.com/v1beta/openai", "google"),
    ("deepseek-chat", "https://api.deepseek.com/v1", "deepseek"),
    ("qwen/qwen-2.5-72b-instruct", "https://openrouter.ai/api/v1", "openrouter"),
])
def test_known_providers_are_priced_from_the_table(model, base_url, provider, monkeypatch):
    """Used to be $0 unless the recipe typed teacher.price."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    price = teacher_price(TeacherConfig(backend="openai", model=model, base_url=base_url))
    assert price.known and price.source.startswith("genai-prices ") and f"({provider} " in price.source
    assert table(model, provider) == rates(price)
    assert price.input_per_mtok > 0 and price.output_per_mtok > 0


def test_the_llm_counts_cost_at_the_table_price(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    llm = build_llm(TeacherConfig(backend="openai", model="gpt-4o-mini"), cache_path=None, show_progress=False)
    expected = calc_price(Usage(input_tokens=2_000, output_tokens=500), "gpt-4o-mini", provider_id="openai").total_price
    assert llm.price.cost(2_000, 500) == pytest.approx(float(expected))


def test_the_recipe_price_overrides_the_table():
    cfg = TeacherConfig(backend="openai", model="gpt-4o-mini", price={"input_per_mtok": 1.0, "output_per_mtok": 3.0})
    price = teacher_price(cfg)
    assert (price.input_per_mtok, price.output_per_mtok, price.source) == (1.0, 3.0, RECIPE)
    free = teacher_price(TeacherConfig(backend="openai", model="gpt-4o-mini", price={}))  # typed, even as zero
    assert (free.input_per_mtok, free.source) == (0.0, RECIPE)


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1",
                                      "http://10.0.0.7/v1", "http://192.168.1.20:8000/v1", "http://gpu-box.local/v1"])
def test_a_local_server_is_not_priced_as_the_provider_model_of_the_same_name(base_url):
    price = teacher_price(TeacherConfig(backend="openai", model="gpt-4o-mini", base_url=base_url))
    assert (price.input_per_mtok, price.output_per_mtok, price.source, price.known) == (0.0, 0.0, LOCAL, True)


def test_the_environment_base_url_decides_like_the_client(monkeypatch):
    """OPENAI_BASE_URL is where the openai backend sends requests when the recipe names none."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert teacher_price(TeacherConfig(backend="openai", model="gpt-4o-mini")).source == LOCAL


@pytest.mark.parametrize("backend", ["embedded", "vllm"])
def test_models_run_here_cost_nothing(backend):
    price = teacher_price(TeacherConfig(backend=backend, model="Qwen/Qwen2.5-7B-Instruct" if backend == "vllm" else None))
    assert (price.input_per_mtok, price.output_per_mtok, price.source) == (0.0, 0.0, LOCAL)


def test_an_unknown_provider_or_model_is_not_counted_and_the_run_warns(caplog):
    remote = TeacherConfig(backend="openai", model="gpt-4o-mini", base_url="https://user:sk-secret@llm.example.com/v1?key=abc")
    price = teacher_price(remote)
    assert not price.known and price.cost(10**6, 10**6) == 0
    assert price.source.startswith("unknown: cost not counted") and "https://llm.example.com/v1" in price.source
    assert "sk-secret" not in price.source and "abc" not in price.source  # credentials stay out of reports
    with caplog.at_level(logging.WARNING):
        build_llm(remote, cache_path=None, show_progress=False)
    assert "cost not counted" in caplog.text and "teacher.price" in caplog.text
    no_model = teacher_price(TeacherConfig(backend="openai", model="no-such-model-xyz"))
    assert not no_model.known and "no-such-model-xyz" in no_model.source


def test_batch_rates_come_from_the_table_else_half_the_standard_rate():
    cfg = TeacherConfig(backend="openai", model="gpt-4o-mini")
    batch = teacher_price(cfg, batch=True)
    assert table("gpt-4o-mini", "openai", price_context={"processing": "batch"}) == rates(batch)
    assert batch.input_per_mtok < teacher_price(cfg).input_per_mtok and batch.source.endswith(", batch)")
    # a model the table has no batch price for: half the standard rate, as OpenAI/Anthropic/Google document
    claude = TeacherConfig(backend="openai", model="claude-sonnet-4-20250514", base_url="https://api.anthropic.com/v1")
    standard, halved = teacher_price(claude), teacher_price(claude, batch=True)
    assert halved.input_per_mtok == pytest.approx(standard.input_per_mtok * BATCH_DISCOUNT)
    assert "batch at 50%" in halved.source
    typed = teacher_price(TeacherConfig(backend="openai", model="m", price={"input_per_mtok": 2, "output_per_mtok": 4}), batch=True)
    assert (typed.input_per_mtok, typed.output_per_mtok) == (1.0, 2.0) and typed.source.startswith(RECIPE)
    assert teacher_price(TeacherConfig(), batch=True).source == LOCAL


def test_is_local_url():
    assert is_local_url("http://127.0.0.2:1/v1") and not is_local_url("https://api.openai.com/v1")


def run(tmp_path, teacher: str) -> dict:
    tmp_path.mkdir()
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"instruction": f"Say fact {i}."}) + "\n" for i in range(4)))
    (tmp_path / "r.yaml").write_text(f"name: priced\ninputs: [{{path: seeds.jsonl}}]\nteacher: {teacher}\n"
                                     "steps: [{responses: {max_tokens: 16}}]\n")
    run_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", show_progress=False)
    return json.loads((tmp_path / "out" / "report.json").read_text())


@pytest.mark.slow
def test_a_run_against_a_local_server_reports_where_its_price_came_from(tmp_path, monkeypatch):
    """Over real HTTP on 127.0.0.1: a server calling its model gpt-4o-mini costs $0 ("local model");
    with teacher.price typed, the report's cost is the tokens at that price, and says so."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    with fault_server() as server:
        local = run(tmp_path / "a", f"{{backend: openai, model: gpt-4o-mini, base_url: '{server.base_url}'}}")
        typed = run(tmp_path / "b", f"{{backend: openai, model: gpt-4o-mini, base_url: '{server.base_url}', "
                                    "price: {input_per_mtok: 2.0, output_per_mtok: 8.0}}")
    assert local["teacher"]["price"] == {"input_per_mtok": 0.0, "output_per_mtok": 0.0, "source": LOCAL, "known": True}
    assert local["llm"]["sent"] == 4 and local["llm"]["prompt_tokens"] > 0 and local["llm"]["cost"] == 0
    llm = typed["llm"]
    assert typed["teacher"]["price"]["source"] == RECIPE and llm["sent"] == 4
    assert llm["cost"] == pytest.approx((llm["prompt_tokens"] * 2.0 + llm["completion_tokens"] * 8.0) / 1e6, abs=1e-6)
    card = (tmp_path / "b" / "out" / "README.md").read_text()
    assert f"cost ${llm['cost']:.4f} (price $2 / $8 per million prompt / completion tokens, from recipe teacher.price)" in card
    assert "from recipe teacher.price" in (tmp_path / "b" / "out" / "report.md").read_text()
