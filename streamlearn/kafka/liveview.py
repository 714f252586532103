"""The demo's built-in live view: a page on 127.0.0.1 with live charts, for machines without Grafana.

A small threaded HTTP server: ``/`` is one self-contained page (inline SVG charts, no CDN, so it
works offline), ``/state.json`` the latest state the demo pushed with :meth:`LiveView.update`. The
page fetches the state every second and redraws without a reload: rolling accuracy per node with
injected drift (red), detected drift (orange, a triangle on top: within ``max_delay`` after an
injected drift) and false alarm (gray, an x on top) markers, divergence against Δ, full and partial syncs over
time, and the bytes sent against what periodic averaging would have sent; a status line ("starting
…", "running", "stopped") and the command that injects a drift into the running demo.

State keys (all optional): ``title``, ``status``, ``summary``, ``drift_command``, ``protocol``,
``baseline`` (legend of the periodic curve), ``history`` (node id to a list of ``{samples,
rolling_accuracy, divergence, group}``: with groups, ``split=N``, a node's accuracy takes the colour of the
group it is averaged in and the legend lists each group's nodes), ``drifts``, ``detected`` and ``false_alarms`` (sample positions), ``max_delay``, ``delta``,
``sync_history`` (list of ``{t, full_syncs, partial_syncs, bytes, periodic_bytes}``), ``score`` (the
history key the first chart draws: ``rolling_accuracy``, from 0 to 1, by default; ``rolling_mae`` for a
regression, from 0 in the label's units) and ``score_title`` (that chart's title). Each chart's
svg records what it drew in ``data-series``, ``data-points``, ``data-markers`` and ``data-xmax``,
and ``<body data-updates>`` counts the redraws, for tests and scripts.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from streamlearn.errors import ConfigError
from streamlearn.evaluation.run import jsonable

__all__ = ["LiveView", "PAGE"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>streamlearn live</title>
<style>
 body { font: 13px system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
 h1 { font-size: 18px; margin: 0 0 4px; } #meta { color: #555; margin-bottom: 4px; }
 #status { font-weight: 600; margin-bottom: 4px; } #status.starting { color: #b26b00; } #status.failed { color: #c00; }
 #inject { color: #555; margin-bottom: 10px; } #inject code { background: #eee; padding: 1px 4px; user-select: all; }
 .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
 .card { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
 .card h2 { font-size: 13px; margin: 0 0 4px; } svg { width: 100%; height: 240px; }
 .legend span { margin-right: 12px; white-space: nowrap; }
</style></head>
<body data-updates="0" data-series="0">
<h1>streamlearn — drift adaptation, live</h1>
<div id="status" class="starting">starting …</div>
<div id="meta">waiting for data …</div>
<div id="inject"></div>
<div class="grid">
 <div class="card"><h2 id="acc-title">Rolling accuracy per node</h2><svg id="acc"></svg>
  <div class="legend" id="acc-legend"></div></div>
 <div class="card"><h2>Divergence ‖w − r‖² per node against Δ</h2><svg id="div"></svg>
  <div class="legend" id="div-legend"></div></div>
 <div class="card"><h2>Syncs so far</h2><svg id="syncs"></svg><div class="legend" id="syncs-legend"></div></div>
 <div class="card"><h2>Communication so far (MB)</h2><svg id="comm"></svg>
  <div class="legend" id="comm-legend"></div></div>
</div>
<script>
const COLORS = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
const NS = "http://www.w3.org/2000/svg";
function el(tag, attrs, parent) { const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); if (parent) parent.appendChild(e); return e; }
const ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
function esc(s) { return String(s).replace(/[&<>"]/g, c => ENTITIES[c]); }
// Draws the series (each {points: [[x, y], ...], color}) with vertical markers (always inside the x-range) and
// horizontal lines; records what it drew on the svg (data-series, data-points, data-markers, data-xmax).
function chart(id, series, opts) {
  const svg = document.getElementById(id); while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = svg.clientWidth || 600, H = svg.clientHeight || 240, L = 48, R = 8, T = 8, B = 22;
  let xs = [], ys = [];
  series.forEach(s => s.points.forEach(p => { xs.push(p[0]); ys.push(p[1]); }));
  Object.assign(svg.dataset, {series: 0, points: xs.length, markers: 0, xmax: xs.length ? Math.max(...xs) : ""});
  if (!xs.length) {
    el("text", {x: L, y: H / 2, fill: "#888"}, svg).textContent = opts.empty || "no data yet"; return 0; }
  const vlines = opts.vlines || [];
  (opts.hlines || []).forEach(v => ys.push(v));
  let x0 = opts.xmin ?? Math.min(...xs), x1 = Math.max(...xs, ...vlines.map(v => v.x));
  let y0 = opts.ymin ?? Math.min(...ys), y1 = opts.ymax ?? Math.max(...ys);
  if (x1 <= x0) x1 = x0 + 1; if (y1 <= y0) y1 = y0 + 1;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"}, svg);
  el("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}, svg);
  [y0, (y0 + y1) / 2, y1].forEach(v => { el("text", {x: 2, y: sy(v) + 4, fill: "#666", "font-size": 10}, svg)
    .textContent = Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3); });
  el("text", {x: L, y: H - 4, fill: "#666", "font-size": 10}, svg).textContent = x0.toFixed(0);
  el("text", {x: W - R, y: H - 4, fill: "#666", "font-size": 10, "text-anchor": "end"}, svg).textContent =
    (opts.xlabel || "") + " " + x1.toFixed(0);
  vlines.forEach(v => { el("line", {x1: sx(v.x), x2: sx(v.x), y1: T, y2: H - B, stroke: v.color,
    "stroke-dasharray": v.dash, "stroke-width": 1.2, class: "marker"}, svg);
    if (v.glyph) el("text", {x: sx(v.x), y: T + 9, fill: v.color, "font-size": 11, "text-anchor": "middle",
      class: "glyph"}, svg).textContent = v.glyph; });
  (opts.hlines || []).forEach(v => el("line", {x1: L, x2: W - R, y1: sy(v), y2: sy(v), stroke: "#444",
    "stroke-dasharray": "6 3"}, svg));
  let drawn = 0;
  series.forEach((s, i) => { if (!s.points.length) return;
    const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
    el("path", {d: d, fill: "none", stroke: s.color || COLORS[i % COLORS.length], "stroke-width": 1.5,
      class: "series"}, svg); drawn++; });
  Object.assign(svg.dataset, {series: drawn, markers: vlines.length});
  return drawn;
}
function legend(id, items) {
  document.getElementById(id).innerHTML = items.map(([color, text, dash]) =>
    `<span style="color:${color}">${dash ? "┆" : "■"} ${esc(text)}</span>`).join("");
}
async function refresh() {
  let st; try { st = await (await fetch("state.json", {cache: "no-store"})).json(); } catch (e) { return; }
  const hist = st.history || {};
  const nodes = Object.keys(hist).sort((a, b) => a - b);
  const color = i => COLORS[i % COLORS.length];
  // With groups (split=N) each node's accuracy line takes the colour of the group it is averaged in, run by run.
  const grouped = nodes.some(n => hist[n].some(p => p.group));
  // The score drawn: rolling accuracy in [0, 1], or a regression's rolling MAE (label units, from 0).
  const key = st.score || "rolling_accuracy", bounded = key === "rolling_accuracy";
  document.getElementById("acc-title").textContent = st.score_title || "Rolling accuracy per node";
  const score = p => (p[key] === undefined ? null : p[key]);
  let acc = nodes.map((n, i) => ({color: color(i),
    points: hist[n].map(p => [p.samples, score(p)]).filter(p => p[1] !== null)}));
  const groupsSeen = new Set();
  if (grouped) {
    acc = [];
    nodes.forEach(n => { let run = null;
      hist[n].filter(p => score(p) !== null).forEach(p => { const g = p.group || 0; groupsSeen.add(g);
        const pt = [p.samples, score(p)];
        if (run && run.group === g) { run.points.push(pt); return; }
        if (run) run.points.push(pt);
        run = {group: g, color: color(g), points: [pt]}; acc.push(run); }); });
  }
  const div = nodes.map((n, i) => ({color: color(i),
    points: hist[n].map(p => [p.samples, p.divergence]).filter(p => p[1] !== null)}));
  const vl = (st.drifts || []).map(x => ({x: x, color: "red", dash: "5 3"}))
    .concat((st.detected || []).map(x => ({x: x, color: "#ff7f0e", dash: "", glyph: "▲"})))
    .concat((st.false_alarms || []).map(x => ({x: x, color: "#888", dash: "2 2", glyph: "×"})));
  const empty = st.status && st.status.startsWith("starting") ? st.status : "no data yet";
  let drawn = chart("acc", acc, {xmin: 0, ymin: 0, ymax: bounded ? 1 : undefined, vlines: vl,
                                 xlabel: "samples per node", empty: empty});
  drawn += chart("div", div, {xmin: 0, ymin: 0, hlines: st.delta ? [st.delta] : [], xlabel: "samples per node",
                              empty: empty});
  const nodeItems = nodes.map((n, i) => [color(i), "node " + n]);
  const last = n => { const h = hist[n]; return h.length ? (h[h.length - 1].group || 0) : 0; };
  const groupItems = [...groupsSeen].sort((a, b) => a - b).map(g => [color(g), "group " + g + ": nodes " +
    (nodes.filter(n => last(n) === g).join(", ") || "none now")]);
  const within = st.max_delay ? " (within " + st.max_delay + ")" : "";
  legend("acc-legend", (grouped ? groupItems : nodeItems).concat([["red", "injected drift", 1], ["#ff7f0e", "▲ detected drift" + within, 1],
                                         ["#888", "× false alarm", 1]]));
  legend("div-legend", nodeItems.concat(st.delta ? [["#444", "Δ = " + st.delta, 1]] : []));
  const sh = st.sync_history || [];
  drawn += chart("syncs", [{points: sh.map(p => [p.t, p.full_syncs]), color: "#2ca02c"},
                           {points: sh.map(p => [p.t, p.partial_syncs]), color: "#bcbd22"}],
                 {xmin: 0, ymin: 0, xlabel: "seconds", empty: empty});
  legend("syncs-legend", [["#2ca02c", "full syncs (all nodes, new reference)"],
                          ["#bcbd22", "partial syncs (a subset balanced)"]]);
  const mb = v => (v === null || v === undefined) ? null : v / 1e6;  // null: not known yet (model size)
  drawn += chart("comm", [{points: sh.map(p => [p.t, mb(p.bytes)]).filter(p => p[1] !== null), color: "#1f77b4"},
                          {points: sh.map(p => [p.t, mb(p.periodic_bytes)]).filter(p => p[1] !== null),
                           color: "#d62728"}],
                 {xmin: 0, ymin: 0, xlabel: "seconds", empty: empty});
  legend("comm-legend", [["#1f77b4", "sent by " + (st.protocol || "this protocol")],
                         ["#d62728", st.baseline || "periodic averaging"]]);
  const status = document.getElementById("status");
  status.textContent = st.status || "";
  status.className = (st.status || "").split(/[: ]/)[0];
  document.getElementById("meta").textContent = (st.title || "") + (st.summary ? " — " + st.summary : "");
  document.getElementById("inject").innerHTML = st.drift_command ?
    "inject a drift: <code>" + esc(st.drift_command) + "</code>" : "";
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  document.body.dataset.series = String(drawn);
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""

class LiveView:
    """Serve :data:`PAGE` and the latest state on ``host:port`` (127.0.0.1 unless asked; port 0: a free one).

    Examples
    --------
    >>> import json, urllib.request
    >>> with LiveView(port=0) as view:
    ...     view.update({"title": "t", "history": {}})
    ...     json.load(urllib.request.urlopen(view.url + "state.json"))["title"]
    't'
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"--view-port: need a port in [0, 65535], got {port!r}")
        self._state = b"{}"
        self._lock = threading.Lock()
        view = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path in ("/", "/index.html"):
                    body, kind = PAGE.encode(), "text/html; charset=utf-8"
                elif self.path.startswith("/state.json"):
                    with view._lock:
                        body = view._state
                    kind = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the terminal view clean
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise ConfigError(f"--view-port: cannot listen on {host}:{port}: {e}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="liveview", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def update(self, state: dict) -> None:
        """Replace the state the page shows (JSON-ready; non-finite numbers become null)."""
        body = json.dumps(jsonable(state), allow_nan=False).encode()
        with self._lock:
            self._state = body

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "LiveView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
