"""Markdown and a self-contained HTML page (inline SVG plots, no network at view time) from the
report dict that compute.py builds; nothing here computes a number."""

from __future__ import annotations

from html import escape
from pathlib import Path

from curate.io import write_json, write_text
from curate.report.plots import bars, histogram


def render_markdown(report: dict) -> str:
    r = report
    lines = [f"# Run report: {r['recipe']}", "",
             f"{r['rows']['out']} rows kept of {r['rows']['in']} ({r['rows']['rejected']} rejected) in {r['seconds']:.1f}s; "
             f"splits: " + ", ".join(f"{k} {v}" for k, v in r["rows"]["splits"].items()), "",
             "| step | in | out | dropped | seconds |", "|---|---|---|---|---|"]
    for s in r["steps"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in (s["dropped"] or {}).items()) or "-"
        lines.append(f"| {s['step']} | {s['rows_in']} | {s['rows_out']} | {dropped} | {s['seconds']} |")
    llm = r["llm"]
    lines += ["", f"Teacher: {r['teacher']['backend']} {r['teacher']['model'] or ''}; {llm['requests']} requests "
              f"({llm['sent']} sent, {llm['cache_hits']} cached, {llm['failures']} failed), {llm['prompt_tokens']} prompt + "
              f"{llm['completion_tokens']} completion tokens, cost ${llm['cost']:.4f} ({price_text(r['teacher'].get('price'))})", ""]
    if r.get("validation"):
        v = r["validation"]
        lines.append(f"Validation ({v['engine']}): {v['passed']}/{v['total']} expectations met"
                     + ("; the run failed (validate.fail_on_error)" if v.get("fails_run") else ""))
        lines += [f"- {'PASS' if c['success'] else 'FAIL'} {c['expectation']}"
                  + (f" [{c['severity']}]" if c.get("severity", "critical") != "critical" else "")
                  + ("" if c["success"] or not c.get("details") else f": {c['details']}") for c in v["results"]]
        if v.get("files"):
            lines.append(f"\nSuite, results and the table they ran on, in great-expectations' format: {', '.join(v['files'])}")
    return "\n".join(lines) + "\n"


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
.grid{display:flex;flex-wrap:wrap;gap:12px}.plot .t{font-size:13px;font-weight:600}.plot .s{font-size:11px}
.ex{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;max-width:520px}
.pass{color:#2a7a2a}.fail{color:#b00020;font-weight:600}.muted{color:#777}"""


def render_html(report: dict) -> str:
    r = report
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>curate report: {escape(r['recipe'])}</title>"
         f"<style>{CSS}</style></head><body>",
         f"<h1>{escape(r['recipe'])}</h1><p>{r['rows']['out']} rows kept of {r['rows']['in']} "
         f"({r['rows']['rejected']} rejected, see rejects.parquet) in {r['seconds']:.1f}s. Splits: "
         + ", ".join(f"{escape(k)} {v}" for k, v in r["rows"]["splits"].items()) + f". Finished {escape(r['finished'])}.</p>"]
    steps = r["steps"]
    h.append("<h2>Funnel</h2><div class='grid'>")
    h.append(bars([s["step"] for s in steps], [s["rows_out"] for s in steps], "rows after each step",
                  dropped=[s["rows_in"] - s["rows_out"] if s["rows_in"] else 0 for s in steps]))
    h.append("</div><table><tr><th>step</th><th>in</th><th>out</th><th>dropped, by reason</th><th>seconds</th></tr>")
    for s in steps:
        dropped = "<br>".join(f"{escape(k)}: {v}" for k, v in (s["dropped"] or {}).items()) or "-"
        note = " <span class='muted'>(unchanged, reused)</span>" if s.get("skipped") else ""
        h.append(f"<tr><td>{escape(s['step'])}{note}</td><td>{s['rows_in']}</td><td>{s['rows_out']}</td>"
                 f"<td>{dropped}</td><td>{s['seconds']}</td></tr>")
    h.append("</table>")
    h.append("<h2>Scores</h2>")
    any_scores = False
    for step, sec in r.get("filters", {}).items():
        plots = [histogram(v["histogram"], f"{step}: {col}", v["thresholds"]) for col, v in sec["scores"].items()]
        plots = [p for p in plots if p]
        if plots:
            any_scores = True
            h.append(f"<div class='grid'>{''.join(plots)}</div>")
        empty = [col for col, v in sec["scores"].items() if not v["histogram"]]
        if empty:
            h.append(f"<p class='muted'>{escape(step)}: no values in {escape(', '.join(empty))}</p>")
    if not any_scores:
        h.append("<p class='muted'>No numeric scores in this run.</p>")
    unit = r.get("length_unit", "words")
    h.append(f"<h2>Lengths ({unit})</h2>")
    if r.get("length_tokenizer"):
        h.append(f"<p class='muted'>Tokens of the turns' contents, counted with the {escape(r['length_tokenizer'])} tokenizer.</p>")
    h.append("<div class='grid'>")
    h += [histogram(v["histogram"], f"{part} length") for part, v in r["lengths"].items()]
    h.append("</div><h2>Sources</h2><div class='grid'>")
    src = r["sources"]
    h.append(bars(list(src), [v["rows"] for v in src.values()], "rows per source"))
    h.append(bars(list(src), [v[unit] for v in src.values()], f"{unit} per source"))
    h.append("</div>")
    if r.get("mix"):
        m = r["mix"]
        h.append(f"<h3>Mixture: requested vs realized ({escape(m['unit'])})</h3><table><tr><th>source</th><th>requested</th>"
                 "<th>share</th><th>realized</th><th>share</th><th>available</th><th>shortfall</th></tr>")
        for s, v in m["sources"].items():
            h.append(f"<tr><td>{escape(s)}</td><td>{v['requested']}</td><td>{v['requested_share']:.3f}</td><td>{v['realized']}</td>"
                     f"<td>{v['realized_share']:.3f}</td><td>{v['available']}</td><td>{v['shortfall']}</td></tr>")
        h.append("</table>")
    llm = r["llm"]
    h.append("<h2>Teacher usage</h2><table><tr><th>step</th><th>requests</th><th>sent</th><th>cached</th><th>failed</th>"
             "<th>prompt tokens</th><th>completion tokens</th><th>cost (USD)</th></tr>")
    for s in steps:
        if s.get("llm"):
            u = s["llm"]
            h.append(f"<tr><td>{escape(s['step'])}</td><td>{u['requests']}</td><td>{u['sent']}</td><td>{u['cache_hits']}</td>"
                     f"<td>{u['failures']}</td><td>{u['prompt_tokens']}</td><td>{u['completion_tokens']}</td><td>{u['cost']:.4f}</td></tr>")
    h.append(f"<tr><th>total</th><th>{llm['requests']}</th><th>{llm['sent']}</th><th>{llm['cache_hits']}</th><th>{llm['failures']}</th>"
             f"<th>{llm['prompt_tokens']}</th><th>{llm['completion_tokens']}</th><th>{llm['cost']:.4f}</th></tr></table>")
    h.append(f"<p class='muted'>Teacher: {escape(str(r['teacher']['backend']))} {escape(str(r['teacher']['model'] or ''))}; "
             f"{escape(price_text(r['teacher'].get('price')))}</p>")
    h.append("<h2>Examples</h2>")
    for step, sec in r.get("filters", {}).items():
        if not (sec["kept_examples"] or sec["dropped_examples"]):
            continue
        h.append(f"<h3>{escape(step)}</h3><table><tr><th>kept</th><th>dropped</th></tr>")
        for i in range(max(len(sec["kept_examples"]), len(sec["dropped_examples"]))):
            cells = []
            for group in ("kept_examples", "dropped_examples"):
                ex = sec[group][i] if i < len(sec[group]) else None
                if ex is None:
                    cells.append("<td></td>")
                    continue
                why = f"<b>{escape(ex.get('reason', ''))}</b> {escape(ex.get('detail', '') or '')}\n" if ex.get("reason") else ""
                cells.append(f"<td class='ex'>{why}<b>Q:</b> {escape(ex['prompt'])}\n<b>A:</b> {escape(ex['response'])}</td>")
            h.append("<tr>" + "".join(cells) + "</tr>")
        h.append("</table>")
    v = r.get("validation")
    h.append("<h2>Validation of the final data</h2>")
    if v:
        h.append(f"<p>{v['passed']} of {v['total']} expectations met ({escape(v['engine'])}).</p><table>"
                 "<tr><th>result</th><th>expectation</th><th>details</th></tr>")
        for c in v["results"]:
            cls, word = ("pass", "PASS") if c["success"] else ("fail", "FAIL")
            h.append(f"<tr><td class='{cls}'>{word}</td><td>{escape(c['expectation'])}</td><td>{escape(c.get('details') or '')}</td></tr>")
        h.append("</table>")
    else:
        h.append("<p class='muted'>Not run.</p>")
    h.append("</body></html>")
    return "\n".join(h)


def write_reports(report: dict, out: Path) -> None:
    write_json(report, out / "report.json")
    write_text(render_markdown(report), out / "report.md")
    write_text(render_html(report), out / "report.html")


def price_text(price: dict | None) -> str:
    """Where the cost figure comes from, for the report and the card."""
    if not price:
        return "price: not recorded"
    if not price.get("known", True):
        return f"price {price['source']}"
    return f"price ${price['input_per_mtok']:g} / ${price['output_per_mtok']:g} per million prompt / completion tokens, " \
           f"from {price['source']}"
