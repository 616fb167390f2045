"""The status page at `/`: the variants, the active one, live p50/p99, requests answered (totals, per variant and
the rate), errors (4xx, 5xx) and the switch log, updated in place once a second from `GET /v2/portfolio/policy`
(no page reloads, no outside scripts). Times are the server's clock, in UTC; the rate is the change of the server's
totals between two updates over the server's time between them."""

from __future__ import annotations

from html import escape

from ..portfolio import Manifest
from .codec import for_task

_SCRIPT = """
let last = null;
const utc = t => new Date(t * 1000).toISOString().slice(11, 23) + ' UTC';
async function refresh() {
  try {
    const s = await (await fetch('/v2/portfolio/policy')).json();
    const t = s.traffic;
    document.getElementById('total').textContent = t.requests;
    document.getElementById('e4xx').textContent = t.errors_4xx;
    document.getElementById('e5xx').textContent = t.errors_5xx;
    if (last !== null && s.server_time > last.time) {
      document.getElementById('rate').textContent = ((t.requests - last.requests) /
        (s.server_time - last.time)).toFixed(1);
    }
    last = {time: s.server_time, requests: t.requests};
    document.getElementById('active').textContent = s.active;
    document.getElementById('policy').textContent = s.name + ' ' + JSON.stringify(s.params);
    document.getElementById('budget').textContent = s.budget_met ? 'met' : 'NOT met';
    for (const row of document.querySelectorAll('tr[data-variant]')) {
      const v = row.dataset.variant, live = s.live_latency[v];
      row.classList.toggle('active', v === s.active);
      row.querySelector('.p50').textContent = live ? live.p50_ms.toFixed(3) : '-';
      row.querySelector('.p99').textContent = live ? live.p99_ms.toFixed(3) : '-';
      row.querySelector('.n').textContent = t.by_variant[v] || 0;
    }
    const log = document.getElementById('switches');
    log.replaceChildren(...s.switches.slice(-20).reverse().map(w => {
      const li = document.createElement('li');
      li.textContent = utc(w.time) + '  ' + w.from + ' → ' + w.to +
        '  (' + (w.seconds * 1000).toFixed(3) + ' ms; ' + w.why + ')';
      return li;
    }));
    document.getElementById('updated').textContent = utc(s.server_time);
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
    quality = for_task(manifest.task).quality
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
server time at the last update <span id="updated">never</span>.</p>
<p>Requests answered: <b id="total">0</b> (<span id="rate">-</span> /s); errors: <span id="e4xx">0</span> 4xx,
<span id="e5xx">0</span> 5xx (every route).</p>
<table><thead><tr><th>variant</th><th>method</th><th>precision</th><th>{quality}</th><th>params</th>
<th>profiled p50 ms</th><th>profiled p90 ms</th><th>live p50 ms</th><th>live p99 ms</th><th>requests answered</th>
</tr></thead>
<tbody>
{rows}
</tbody></table>
<p>Live p50/p99: the last 500 inferences of each variant, timed in the server.</p>
<h2>Switches (latest first; server time, UTC)</h2>
<ol id="switches"></ol>
<script>{_SCRIPT}</script>
</body></html>
"""
