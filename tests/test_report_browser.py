"""The HTML report renders in a real headless Chromium: its plots are drawn, and it needs no network.

Needs Debian's `chromium` (installed by .ci/run); skipped with a reason where it is missing.
"""

import json
import shutil
import subprocess

import pytest
from PIL import Image

from curate.engine import run_recipe
from curate.recipe import load_recipe

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    rows = [{"prompt": f"Tell me fact number {i % 40} about the sea.",
             "completion": " ".join(["The sea is large and salty."] * (1 + i % 9)) if i % 11 else "No."}
            for i in range(120)]
    (tmp / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "r.yaml").write_text("name: browser-check\ninputs: [{path: d.jsonl, source: sea}]\nsteps:\n"
                                "  - heuristics: {min_response_words: 3}\n  - exact_dedup: {field: prompt}\n"
                                "output: {validation: 0.1}\n")
    run_recipe(load_recipe(tmp / "r.yaml"), tmp / "out", show_progress=False)
    return tmp / "out" / "report.html", tmp


def chromium(*args, tmp):
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_dom_has_the_plots_and_tables(report_html):
    html, tmp = report_html
    proc = chromium("--dump-dom", html.as_uri(), tmp=tmp)
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert dom.count("<svg") >= 6  # funnel, score histograms, lengths, sources
    assert 'class="threshold"' in dom  # thresholds drawn on the heuristics histograms
    for heading in ("Funnel", "Scores", "Lengths (tokens)", "Sources", "Teacher usage", "Examples", "Validation of the final data"):
        assert f">{heading}<" in dom, heading
    assert "expectations met (great-expectations)" in dom or "expectations met (polars" in dom


def test_screenshot_shows_drawn_bars(report_html):
    html, tmp = report_html
    shot = tmp / "report.png"
    proc = chromium("--window-size=1280,2400", f"--screenshot={shot}", html.as_uri(), tmp=tmp)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    pixels = list(img.get_flattened_data()) if hasattr(img, "get_flattened_data") else list(img.getdata())
    bar = sum(1 for p in pixels if abs(p[0] - 0x4C) < 12 and abs(p[1] - 0x78) < 12 and abs(p[2] - 0xA8) < 12)
    dropped = sum(1 for p in pixels if abs(p[0] - 0xE4) < 12 and abs(p[1] - 0x57) < 12 and abs(p[2] - 0x56) < 12)
    assert bar > 5000, f"only {bar} pixels in the bar colour: the plots did not render"
    assert dropped > 50, "the funnel's dropped segments did not render"
