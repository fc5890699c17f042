"""report.html: one self-contained page (no network): the report's figures drawn as inline SVG.

The page embeds the report (without its histograms and raw snapshot) as JSON in a script tag;
an inline script draws the charts (latency percentiles per endpoint, throughput and errors over
time, p99 over time, open WebSockets, convergence curves) and the tables. Once every chart drew
it adds `#charts-drawn`; any script error or console.error adds a `.js-error` element instead (a
headless browser test reads both). The title, the banners and a no-script note are plain HTML.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

MISMATCHES_SHOWN = 200


def page_data(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the page draws: the report minus what it does not show (histograms, raw snapshot,
    the plan's device list)."""
    plan = report.get("scenario", {}).get("plan", {})
    mismatches = report.get("consistency", {}).get("mismatches", [])
    admin = report.get("admin_timeline")  # the runner's: what each action did, and when
    if not isinstance(admin, list):
        admin = [
            {
                "at_s": a.get("at_s"),
                "action": a.get("action"),
                "name": a.get("args", {}).get("name"),
            }
            for a in plan.get("timeline", [])
        ]
    fleet = report.get("fleet")
    return {
        "scenario": {k: v for k, v in report.get("scenario", {}).items() if k != "plan"},
        "admin_timeline": admin,
        "fleet": fleet if isinstance(fleet, Mapping) else {},
        **{
            key: report.get(key)
            for key in (
                "seed",
                "shard",
                "versions",
                "target",
                "started",
                "duration_s",
                "time_scale",
                "partial",
                "devices",
                "timeline",
                "convergence",
                "expectations",
                "generator",
                "events",
                "warnings",
            )
        },
        "requests": {
            key: {k: v for k, v in entry.items() if k != "hdr"}
            for key, entry in report.get("requests", {}).items()
        },
        "consistency": {
            "checked": report.get("consistency", {}).get("checked", 0),
            "mismatch_count": len(mismatches),
            "mismatches": mismatches[:MISMATCHES_SHOWN],
        },
    }


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no `</script>`, no `<!--`)."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(report: Mapping[str, Any]) -> str:
    scenario = html.escape(str(report.get("scenario", {}).get("name", "run")))
    banners = []
    if report.get("generator", {}).get("saturated"):
        banners.append(
            '<div class="banner saturated" id="saturated">SATURATED: the generator could not keep '
            "its schedule (event-loop send lag p99 above 10 ms); the latencies below are not "
            "trustworthy.</div>"
        )
    if report.get("partial"):
        banners.append(
            '<div class="banner partial">PARTIAL: the run was stopped before its duration.</div>'
        )
    checks = report.get("expectations", [])
    failed = [c for c in checks if not c.get("passed")]
    if checks:
        kind, text = (
            ("fail", f"{len(failed)} of {len(checks)} expectations failed")
            if failed
            else (
                "pass",
                f"all {len(checks)} expectations held",
            )
        )
        banners.append(f'<div class="banner {kind}" id="verdict">{html.escape(text)}</div>')
    parts = {
        "TITLE": f"midm-sim report: {scenario}",
        "BANNERS": "\n".join(banners),
        "DATA": script_json(page_data(report)),
    }
    return _SLOT.sub(lambda match: parts[match.group(1)], TEMPLATE)  # one pass: no re-expansion


_SLOT = re.compile(r"\{\{(TITLE|BANNERS|DATA)\}\}")


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<script>
(function () {
  function fail(message) {
    var add = function () {
      var box = document.createElement("pre");
      box.className = "js-error";
      box.textContent = "script error: " + message;
      document.body.insertBefore(box, document.body.firstChild);
    };
    if (document.body) { add(); } else { document.addEventListener("DOMContentLoaded", add); }
  }
  window.reportFail = fail;
  window.onerror = function (message, source, line) { fail(message + " (line " + line + ")"); };
  var original = console.error;
  console.error = function () {
    fail(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
</script>
<style>
  :root { --fg: #1d2330; --muted: #5d6778; --line: #d9dee7; --bg: #f6f7f9; --card: #fff; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: var(--fg); background: var(--bg); }
  header { padding: 18px 28px 10px; background: #1d2330; color: #fff; }
  header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
  header .meta { color: #c5cbd6; font-size: 13px; }
  main { padding: 14px 28px 40px; max-width: 1280px; }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
            padding: 14px 18px; margin: 14px 0; }
  h2 { font-size: 16px; margin: 0 0 10px; }
  .banner { padding: 10px 14px; border-radius: 6px; margin: 12px 0 0; font-weight: 600; }
  .banner.saturated { background: #b3261e; color: #fff; font-size: 15px; }
  .banner.partial { background: #f5c04a; color: #3b2a00; }
  .banner.fail { background: #fde2e0; color: #8c1d18; border: 1px solid #f1b3ad; }
  .banner.pass { background: #e3f4e6; color: #1c5a2b; border: 1px solid #b5dfbe; }
  .js-error { background: #b3261e; color: #fff; padding: 10px; margin: 0; white-space: pre-wrap; }
  .cards { display: flex; flex-wrap: wrap; gap: 10px; }
  .card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 120px; }
  .card .v { font-size: 18px; font-weight: 600; }
  .card .k { color: var(--muted); font-size: 12px; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right; }
  th { color: var(--muted); font-weight: 600; font-size: 12px; }
  th:first-child, td:first-child { text-align: left; }
  td.left, #expectations-table th { text-align: left; }
  td.expr { text-align: left; font-family: ui-monospace, Menlo, monospace; font-size: 12px; }
  .pass { color: #1c7a35; font-weight: 600; }
  .fail { color: #b3261e; font-weight: 600; }
  .chart { width: 100%; margin: 4px 0 10px; }
  .chart svg { width: 100%; height: auto; display: block; }
  .chart text { font: 11px system-ui, sans-serif; fill: var(--muted); }
  .chart .title { font-size: 12px; font-weight: 600; fill: var(--fg); }
  .grid line { stroke: #eceff4; }
  .axis line, .axis path { stroke: #9aa3b2; }
  .note { color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>{{TITLE}}</h1>
  <div class="meta" id="meta"></div>
  {{BANNERS}}
</header>
<noscript><p>The charts need JavaScript (inline, no network); report.json holds every figure.
</p></noscript>
<main>
  <section id="overview"><h2>Overview</h2><div class="cards" id="cards"></div></section>
  <section id="expectations"><h2>Expectations</h2><div id="expectations-table"></div></section>
  <section id="latency"><h2>Latency percentiles per endpoint</h2>
    <p class="note">From each request's intended send time (no coordinated omission), HDR
      histograms; log scale.</p>
    <div class="chart" id="chart-latency"></div><div id="latency-table"></div></section>
  <section id="throughput"><h2>Throughput and errors over time</h2>
    <div class="chart" id="chart-throughput"></div>
    <div class="chart" id="chart-p99"></div>
    <div class="chart" id="chart-websockets"></div></section>
  <section id="convergence"><h2>Rollout convergence</h2>
    <p class="note">Share of the scoped devices that applied each profile, by seconds after its
      save (scenario time).</p>
    <div class="chart" id="chart-convergence"></div><div id="convergence-table"></div></section>
  <section id="generator"><h2>Generator health</h2><div id="generator-table"></div></section>
  <section id="consistency"><h2>Consistency</h2><div id="consistency-table"></div></section>
  <section id="run"><h2>Run</h2><div id="run-table"></div></section>
</main>
<script type="application/json" id="report-data">{{DATA}}</script>
<script>
(function () {
  "use strict";
  var R = JSON.parse(document.getElementById("report-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477",
                "#66aa00", "#b82e2e", "#316395"];
  var W = 960, H = 280, M = {l: 62, r: 16, t: 26, b: 40};

  function el(tag, attrs, parent, text) {
    var node = document.createElementNS(SVG, tag);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function h(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = text; }
    if (cls) { node.className = cls; }
    return node;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) { return "-"; }
    if (typeof v === "boolean") { return v ? "yes" : "no"; }
    if (typeof v !== "number") { return String(v); }
    if (Number.isInteger(v)) { return v.toLocaleString("en-US"); }
    var d = digits === undefined ? (Math.abs(v) < 10 ? 3 : Math.abs(v) < 100 ? 2 : 1) : digits;
    return v.toFixed(d);
  }
  function table(host, columns, rows) {
    var t = h("table"), head = h("tr");
    columns.forEach(function (c) { head.appendChild(h("th", c)); });
    t.appendChild(head);
    rows.forEach(function (row) {
      var tr = h("tr");
      row.forEach(function (cell) {
        var td = h("td");
        if (cell && typeof cell === "object" && cell.text !== undefined) {
          td.textContent = cell.text; if (cell.cls) { td.className = cell.cls; }
        } else { td.textContent = fmt(cell); }
        tr.appendChild(td);
      });
      t.appendChild(tr);
    });
    if (!rows.length) {
      var empty = h("tr"), td = h("td", "none", "note");
      td.colSpan = columns.length; empty.appendChild(td); t.appendChild(empty);
    }
    document.getElementById(host).appendChild(t);
  }
  function niceStep(span, count) {
    var raw = span / Math.max(1, count), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var n = raw / mag;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
  }
  function linearTicks(lo, hi, count) {
    if (hi <= lo) { hi = lo + 1; }
    var step = niceStep(hi - lo, count), ticks = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      ticks.push(Math.round(v / step) * step);
    }
    return ticks;
  }
  function scale(lo, hi, a, b, log) {
    if (log) {
      var L = Math.log10(lo), S = Math.log10(hi) - L || 1;
      return function (v) { return a + (Math.log10(Math.max(v, lo)) - L) / S * (b - a); };
    }
    var span = (hi - lo) || 1;
    return function (v) { return a + (v - lo) / span * (b - a); };
  }
  function frame(hostId, title, xLabel, yLabel, height) {
    H = height || 280;
    var host = document.getElementById(hostId);
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, role: "img"}, host);
    el("text", {x: M.l, y: 15, "class": "title"}, svg, title);
    el("text", {x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle"}, svg, xLabel);
    el("text", {x: 14, y: (M.t + H - M.b) / 2, "text-anchor": "middle",
                transform: "rotate(-90 14 " + (M.t + H - M.b) / 2 + ")"}, svg, yLabel);
    return svg;
  }
  function axes(svg, xs, ys, xTicks, yTicks, xFmt, yFmt) {
    var grid = el("g", {"class": "grid"}, svg), axis = el("g", {"class": "axis"}, svg);
    yTicks.forEach(function (v) {
      var y = ys(v);
      el("line", {x1: M.l, x2: W - M.r, y1: y, y2: y}, grid);
      el("text", {x: M.l - 6, y: y + 4, "text-anchor": "end"}, axis, yFmt(v));
    });
    xTicks.forEach(function (v) {
      var x = xs(v);
      el("line", {x1: x, x2: x, y1: H - M.b, y2: H - M.b + 4}, axis);
      el("text", {x: x, y: H - M.b + 16, "text-anchor": "middle"}, axis, xFmt(v));
    });
    el("path", {d: "M" + M.l + "," + M.t + "V" + (H - M.b) + "H" + (W - M.r), fill: "none"}, axis);
  }
  function legend(svg, names) {
    var x = W - M.r;
    for (var i = names.length - 1; i >= 0; i--) {
      var width = 18 + names[i].length * 6.5;
      x -= width;
      el("rect", {x: x, y: 6, width: 10, height: 10, fill: COLORS[i % COLORS.length]}, svg);
      el("text", {x: x + 14, y: 15}, svg, names[i]);
    }
  }
  function noData(svg) {
    el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", "class": "title"}, svg, "no data");
  }

  // series: [{name, points: [[x, y], ...], step}] ; y values may be null (gaps)
  function lineChart(hostId, o) {
    var svg = frame(hostId, o.title, o.xLabel, o.yLabel, o.height);
    var pts = [];
    o.series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[1] !== null) { pts.push(p); } });
    });
    if (!pts.length) { noData(svg); return true; }
    var xsOf = pts.map(function (p) { return p[0]; });
    var ysOf = pts.map(function (p) { return p[1]; });
    var x0 = o.xMin !== undefined ? o.xMin : Math.min.apply(null, xsOf);
    var x1 = Math.max.apply(null, xsOf);
    if (x1 <= x0) { x1 = x0 + 1; }
    var y1 = o.yMax !== undefined ? o.yMax : Math.max.apply(null, ysOf);
    if (!(y1 > 0)) { y1 = 1; }
    var yTicks = linearTicks(0, y1, 5); y1 = Math.max(y1, yTicks[yTicks.length - 1]);
    var xs = scale(x0, x1, M.l, W - M.r, false), ys = scale(0, y1, H - M.b, M.t, false);
    axes(svg, xs, ys, linearTicks(x0, x1, 10), yTicks, function (v) { return fmt(v); },
         o.yFmt || function (v) { return fmt(v); });
    o.series.forEach(function (s, i) {
      var d = "", pen = false, prevY = null;
      s.points.forEach(function (p) {
        if (p[1] === null) { pen = false; return; }
        var x = xs(p[0]).toFixed(1), y = ys(p[1]).toFixed(1);
        if (!pen) { d += "M" + x + "," + y; }
        else if (s.step) { d += "H" + x + "V" + y; }
        else { d += "L" + x + "," + y; }
        pen = true; prevY = y;
      });
      if (s.step && pen && s.extendTo !== undefined) { d += "H" + xs(s.extendTo).toFixed(1); }
      el("path", {d: d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.8,
                  "stroke-linejoin": "round"}, svg);
      (s.marks || []).forEach(function (m) {
        if (m[0] === null) { return; }
        el("circle", {cx: xs(m[0]), cy: ys(m[1]), r: 3.2, fill: COLORS[i % COLORS.length]}, svg);
      });
    });
    legend(svg, o.series.map(function (s) { return s.name; }));
    return true;
  }

  // categories: names; series: [{name, values: [...]}] ; log scale
  function barChart(hostId, o) {
    var svg = frame(hostId, o.title, o.xLabel, o.yLabel);
    var values = [];
    o.series.forEach(function (s) {
      s.values.forEach(function (v) { if (v !== null && v > 0) { values.push(v); } });
    });
    if (!values.length || !o.categories.length) { noData(svg); return true; }
    var lo = Math.pow(10, Math.floor(Math.log10(Math.min.apply(null, values))));
    var hi = Math.pow(10, Math.ceil(Math.log10(Math.max.apply(null, values))));
    if (hi <= lo) { hi = lo * 10; }
    var ys = scale(lo, hi, H - M.b, M.t, true), yTicks = [];
    for (var v = lo; v <= hi * 1.0001; v *= 10) { yTicks.push(v); }
    var band = (W - M.l - M.r) / o.categories.length, bar = band * 0.8 / o.series.length;
    var xs = function (i) { return M.l + band * (i + 0.5); };
    axes(svg, xs, ys, [], yTicks, String,
         function (t) { return t >= 1 ? fmt(t) : String(+t.toPrecision(1)); });
    o.categories.forEach(function (c, i) {
      el("text", {x: xs(i), y: H - M.b + 16, "text-anchor": "middle"}, svg, c);
    });
    o.series.forEach(function (s, j) {
      s.values.forEach(function (v, i) {
        if (v === null || !(v > 0)) { return; }
        var x = M.l + band * i + band * 0.1 + bar * j, y = ys(v);
        var rect = el("rect", {x: x, y: y, width: Math.max(1, bar - 1), height: H - M.b - y,
                               fill: COLORS[j % COLORS.length]}, svg);
        el("title", {}, rect, o.categories[i] + " " + s.name + ": " + fmt(v) + " ms");
      });
    });
    legend(svg, o.series.map(function (s) { return s.name; }));
    return true;
  }

  function meta() {
    var s = R.scenario || {};
    var bits = ["started " + R.started, "duration " + fmt(R.duration_s) + " s",
                "time scale " + fmt(R.time_scale), "target " + R.target, "seed " + R.seed,
                "plan " + String(s.plan_hash || "").slice(0, 12)];
    if (R.shard && R.shard.count > 1) { bits.push("shard " + R.shard.index + "/" + R.shard.count); }
    document.getElementById("meta").textContent = bits.join("  \u00b7  ");
  }
  function cards() {
    var host = document.getElementById("cards"), req = R.requests || {}, total = 0, errors = 0;
    Object.keys(req).forEach(function (k) {
      total += req[k].count;
      Object.keys(req[k].errors).forEach(function (c) { errors += req[k].errors[c]; });
    });
    var d = R.devices || {}, g = R.generator || {};
    var items = [["devices planned", d.planned], ["enrolled", d.enrolled], ["failed", d.failed],
                 ["requests", total], ["errors", errors],
                 ["error rate", total ? +(errors / total).toPrecision(3) : 0],
                 ["send lag p99 ms", (g.send_lag_ms || {}).p99], ["saturated", g.saturated],
                 ["mismatches", (R.consistency || {}).mismatch_count]];
    items.forEach(function (it) {
      var c = h("div", null, "card");
      c.appendChild(h("div", fmt(it[1]), "v")); c.appendChild(h("div", it[0], "k"));
      host.appendChild(c);
    });
  }
  function expectationsTable() {
    table("expectations-table", ["", "name", "expression", "observed"],
      (R.expectations || []).map(function (e) {
        return [{text: e.passed ? "PASS" : "FAIL", cls: e.passed ? "pass" : "fail"},
                {text: e.name, cls: "left"}, {text: e.expr, cls: "expr"},
                {text: JSON.stringify(e.observed), cls: "expr"}];
      }));
  }
  var PCT = [["p50", "p50"], ["p90", "p90"], ["p99", "p99"], ["p999", "p99.9"], ["max", "max"]];
  function latency() {
    var keys = Object.keys(R.requests || {});
    barChart("chart-latency", {
      title: "Latency by endpoint", xLabel: "endpoint", yLabel: "ms (log)", categories: keys,
      series: PCT.map(function (p) {
        return {name: p[1],
                values: keys.map(function (k) { return R.requests[k].latency_ms[p[0]]; })};
      })});
    var heads = PCT.map(function (p) { return p[1] + " ms"; });
    table("latency-table", ["endpoint", "count", "errors"].concat(heads),
      keys.map(function (k) {
        var e = R.requests[k];
        var errs = Object.keys(e.errors).map(function (c) { return c + " " + e.errors[c]; });
        return [k, e.count, {text: errs.join(", ") || "0", cls: errs.length ? "fail" : ""}].concat(
          PCT.map(function (p) { return e.latency_ms[p[0]]; }));
      }));
    return true;
  }
  function throughput() {
    var rows = R.timeline || [];
    lineChart("chart-throughput", {title: "Device requests and errors per second",
      xLabel: "run time (s)", yLabel: "per second", xMin: 0, series: [
        {name: "requests/s", points: rows.map(function (r) { return [r.t, r.rps]; })},
        {name: "errors/s", points: rows.map(function (r) { return [r.t, r.errors]; })}]});
    lineChart("chart-p99", {title: "p99 latency per second", xLabel: "run time (s)", yLabel: "ms",
      xMin: 0, height: 210, series: [{name: "p99 ms",
                         points: rows.map(function (r) { return [r.t, r.p99_ms]; })}]});
    lineChart("chart-websockets", {title: "Open WebSockets", xLabel: "run time (s)", yLabel: "open",
      xMin: 0, height: 190, series: [{name: "websockets", step: true,
                         points: rows.map(function (r) { return [r.t, r.websockets]; })}]});
    return true;
  }
  function convergence() {
    var conv = R.convergence || {}, names = Object.keys(conv), end = 0;
    names.forEach(function (n) {
      conv[n].curve.forEach(function (p) { end = Math.max(end, p[0]); });
      ["t50_s", "t90_s", "t99_s"].forEach(function (k) {
        if (conv[n][k] !== null) { end = Math.max(end, conv[n][k]); }
      });
    });
    lineChart("chart-convergence", {title: "Devices applied (fraction of scoped)",
      xLabel: "seconds after the save", yLabel: "fraction", xMin: 0, yMax: 1,
      yFmt: function (v) { return Math.round(v * 100) + "%"; },
      series: names.map(function (n) {
        var c = conv[n];
        return {name: n, step: true, extendTo: end, points: c.curve,
                marks: [[c.t50_s, 0.5], [c.t90_s, 0.9], [c.t99_s, 0.99]]};
      })});
    table("convergence-table", ["profile", "scoped", "applied", "failed", "deferred", "fraction",
                                "t50 s", "t90 s", "t99 s", "server applied"],
      names.map(function (n) {
        var c = conv[n];
        return [n, c.scoped, c.applied, c.failed, c.deferred, c.fraction, c.t50_s, c.t90_s, c.t99_s,
                c.server ? c.server.applied : null];
      }));
    return true;
  }
  function generator() {
    var g = R.generator || {}, lag = g.send_lag_ms || {}, late = g.lateness_ms || {};
    table("generator-table", ["", "value"], [
      ["CPU seconds", g.cpu_s], ["CPU share of one core", g.cpu_share], ["peak RSS MB", g.rss_mb],
      ["processes", g.processes],
      ["event-loop send lag p50 / p99 / max ms", three(lag)],
      ["request lateness p50 / p99 / max ms", three(late)],
      ["saturated (send-lag p99 > 10 ms)",
       {text: g.saturated ? "YES: latencies are not trustworthy" : "no",
        cls: g.saturated ? "fail" : "pass"}]]);
  }
  function three(v) {
    return fmt(v.p50) + " / " + fmt(v.p99) + " / " + fmt(v.max);
  }
  function consistency() {
    var c = R.consistency || {};
    var host = document.getElementById("consistency-table");
    var shown = c.mismatch_count > c.mismatches.length
      ? " (first " + c.mismatches.length + " shown)" : "";
    host.appendChild(h("p", fmt(c.checked) + " devices checked, " + fmt(c.mismatch_count) +
                       " mismatches" + shown, "note"));
    var columns = ["serial", "field", "device", "server"];
    table("consistency-table", columns, c.mismatches.map(function (m) {
      return [m.serial, m.field, {text: JSON.stringify(m.device), cls: "expr"},
              {text: JSON.stringify(m.server), cls: "expr"}];
    }));
  }
  function run() {
    var s = R.scenario || {};
    var rows = [["scenario", s.name], ["scenario sha256", s.sha256], ["plan hash", s.plan_hash]];
    Object.keys(R.versions || {}).forEach(function (k) {
      rows.push(["version " + k, R.versions[k]]);
    });
    Object.keys(R.events || {}).forEach(function (k) { rows.push(["events " + k, R.events[k]]); });
    var f = R.fleet || {};
    if (f.start_lag_ms) { rows.push(["start lag p50 / p99 / max ms", three(f.start_lag_ms)]); }
    ["checkins", "checkin_failures", "consistency_settled"].forEach(function (k) {
      if (f[k] !== undefined) { rows.push(["fleet " + k.replace(/_/g, " "), fmt(f[k])]); }
    });
    (f.agent_errors || []).forEach(function (e) {
      rows.push(["agent error " + e.serial, e.error]);
    });
    (R.admin_timeline || []).forEach(function (a) {
      var what = a.action + (a.name ? " " + a.name : "");
      if (a.started_s !== undefined) { what += " (began at " + fmt(a.started_s) + " s)"; }
      if (a.error) { what += ": " + a.error; }
      rows.push([{text: "admin at " + fmt(a.at_s) + " s", cls: a.error ? "fail" : ""}, what]);
    });
    (R.warnings || []).forEach(function (w) { rows.push([{text: "warning", cls: "fail"}, w]); });
    table("run-table", ["", ""], rows.map(function (r) {
      return [r[0], {text: r[1] === undefined ? "-" : String(r[1]), cls: "expr"}];
    }));
  }

  var steps = [meta, cards, expectationsTable, latency, throughput, convergence, generator,
               consistency, run];
  var done = 0;
  steps.forEach(function (step) {
    try { step(); done += 1; }
    catch (err) { window.reportFail(step.name + ": " + (err && err.stack || err)); }
  });
  if (done === steps.length) {
    var marker = h("p", null, "note");
    marker.id = "charts-drawn";
    marker.setAttribute("data-charts", String(document.querySelectorAll(".chart svg").length));
    document.querySelector("main").appendChild(marker);
  }
})();
</script>
</body>
</html>
"""
