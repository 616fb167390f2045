"""The status page at `/`: the variants, the active one, live p50/p99 and the switch log, updated in place once a
second from `GET /v2/portfolio/policy` (no page reloads, no outside scripts)."""

from __future__ import annotations

from html import escape

from ..portfolio import Manifest

_SCRIPT = """
async function refresh() {
  try {
    const s = await (await fetch('/v2/portfolio/policy')).json();
    document.getElementById('active').textContent = s.active;
    document.getElementById('policy').textContent = s.name + ' ' + JSON.stringify(s.params);
    document.getElementById('budget').textContent = s.budget_met ? 'met' : 'NOT met';
    for (const row of document.querySelectorAll('tr[data-variant]')) {
      const v = row.dataset.variant, live = s.live_latency[v];
      row.classList.toggle('active', v === s.active);
      row.querySelector('.p50').textContent = live ? live.p50_ms.toFixed(3) : '-';
      row.querySelector('.p99').textContent = live ? live.p99_ms.toFixed(3) : '-';
      row.querySelector('.n').textContent = live ? live.n : '0';
    }
    const log = document.getElementById('switches');
    log.replaceChildren(...s.switches.slice(-20).reverse().map(w => {
      const li = document.createElement('li');
      li.textContent = new Date(w.time * 1000).toISOString().slice(11, 23) + '  ' + w.from + ' → ' + w.to +
        '  (' + (w.seconds * 1000).toFixed(3) + ' ms; ' + w.why + ')';
      return li;
    }));
    document.getElementById('updated').textContent = new Date().toISOString().slice(11, 19);
  } catch (e) {
    document.getElementById('updated').textContent = 'server not answering';
  }
}
refresh();
setInterval(refresh, 1000);
"""


def page(manifest: Manifest, mode: str) -> str:
    rows = "\n".join(
        f'<tr data-variant="{escape(v.id)}"><td>{escape(v.id)}</td><td>{escape(v.method)}</td>'
        f"<td>{escape(v.precision)}</td>"
        f"<td>{100 * v.accuracy:.2f} %</td><td>{v.params:,}</td><td>{v.p50_ms:.3f}</td><td>{v.p90_ms:.3f}</td>"
        '<td class="p50">-</td><td class="p99">-</td><td class="n">0</td></tr>'
        for v in manifest.variants)
    quality = "profiled AP@0.5" if manifest.task == "detect" else "accuracy"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeprune serve</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
tr.active {{ background: #dfd; font-weight: bold; }}
</style></head><body>
<h1>edgeprune serve</h1>
<p>{escape(manifest.data)}, input {escape(manifest.datatype)} {manifest.input_shape}, switch mode {escape(mode)}.
Active: <b id="active">-</b>; policy <span id="policy">-</span>; budget <span id="budget">-</span>;
updated <span id="updated">never</span>.</p>
<table><thead><tr><th>variant</th><th>method</th><th>precision</th><th>{quality}</th><th>params</th>
<th>profiled p50 ms</th><th>profiled p90 ms</th><th>live p50 ms</th><th>live p99 ms</th><th>requests</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<h2>Switches (latest first)</h2>
<ol id="switches"></ol>
<script>{_SCRIPT}</script>
</body></html>
"""
