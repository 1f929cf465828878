// The service graph page: fetches /api/graph every 2 s and draws it as SVG in columns
// (callers left of callees), with the selected edge's HTTP table below. No framework, and
// nothing loaded from elsewhere.
"use strict";

const POLL_MS = 2000;
const NODE_W = 176, NODE_H = 52, ROW_GAP = 34, COL_MIN = 360, PAD = 28;
const SVG_NS = "http://www.w3.org/2000/svg";

let selected = null;   // the selected edge's id
let last = null;       // the last graph fetched

function el(name, attrs, text) {
  const e = name.includes(":") || ["svg", "g", "path", "rect", "text", "tspan", "marker", "defs", "title"].includes(name)
    ? document.createElementNS(SVG_NS, name) : document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtRps(r) { return r >= 10 ? r.toFixed(1) : r.toFixed(2); }
function fmtPct(p) { return p === null || p === undefined ? "–" : p.toFixed(1) + "%"; }
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
  return (Number.isInteger(ms) ? ms : ms.toFixed(1)) + " ms";
}
function health(e) {
  if (!e.requests) return "idle";
  if (e.error_percent >= 5) return "bad";
  return e.error_percent > 0 ? "warn" : "ok";
}
function bezier(p0, p1, p2, p3, t) {
  const u = 1 - t;
  return [0, 1].map(i => u * u * u * p0[i] + 3 * u * u * t * p1[i] + 3 * u * t * t * p2[i] + t * t * t * p3[i]);
}
function short(s, n) { return s.length > n ? s.slice(0, n - 1) + "…" : s; }

// Columns by longest path from the callers, with the edges that close a cycle left out (a
// depth-first search from the callers finds them); rows by the mean row of each node's
// callers, to keep lines short and straight.
function layout(graph) {
  const ids = graph.nodes.map(n => n.id).sort();
  const out = Object.fromEntries(ids.map(id => [id, []]));
  const callers = Object.fromEntries(ids.map(id => [id, 0]));
  for (const e of graph.edges) {
    if (e.source !== e.target) { out[e.source].push(e.target); callers[e.target]++; }
  }
  const state = {}, back = new Set();
  const visit = u => {
    state[u] = 1;
    for (const v of out[u]) {
      if (state[v] === 1) back.add(u + "\n" + v);
      else if (!state[v]) visit(v);
    }
    state[u] = 2;
  };
  for (const id of [...ids].sort((a, b) => (callers[a] > 0) - (callers[b] > 0))) if (!state[id]) visit(id);
  const layer = Object.fromEntries(ids.map(id => [id, 0]));
  for (let round = 0; round < ids.length; round++) {
    let changed = false;
    for (const u of ids) for (const v of out[u]) {
      if (!back.has(u + "\n" + v) && layer[v] < layer[u] + 1) { layer[v] = layer[u] + 1; changed = true; }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of graph.nodes) (columns[layer[n.id]] ||= []).push(n);
  for (let c = columns.length - 1; c >= 0; c--) if (!columns[c]) columns.splice(c, 1);
  columns.forEach((col, c) => col.forEach(n => { layer[n.id] = c; }));
  const row = {};
  columns.forEach((col, c) => {
    const weight = n => {
      const from = graph.edges.filter(e => e.target === n.id && layer[e.source] < c).map(e => row[e.source]);
      return from.length ? from.reduce((a, b) => a + b, 0) / from.length : -1;
    };
    col.sort((a, b) => weight(a) - weight(b) || a.id.localeCompare(b.id));
    col.forEach((n, i) => { row[n.id] = i; });
  });
  const rows = Math.max(1, ...columns.map(c => c.length));
  const width = Math.max(document.getElementById("graph").clientWidth, PAD * 2 + NODE_W + (columns.length - 1) * COL_MIN);
  const height = Math.max(220, PAD * 2 + rows * NODE_H + (rows - 1) * ROW_GAP + 16);
  const step = columns.length > 1 ? (width - PAD * 2 - NODE_W) / (columns.length - 1) : 0;
  const pos = {};
  columns.forEach((col, c) => {
    const top = (height - (col.length * NODE_H + (col.length - 1) * ROW_GAP)) / 2;
    col.forEach((n, i) => {
      pos[n.id] = { x: columns.length > 1 ? PAD + c * step : (width - NODE_W) / 2, y: top + i * (NODE_H + ROW_GAP) };
    });
  });
  return { pos, width, height, step };
}

function drawGraph(graph) {
  const svg = document.getElementById("canvas");
  svg.replaceChildren();
  document.getElementById("empty").hidden = graph.edges.length > 0;
  const dropped = document.getElementById("dropped");
  dropped.hidden = !graph.dropped_requests;
  dropped.textContent = `${graph.dropped_requests} requests in the window are not shown: ` +
    `more than ${graph.max_edges} edges.`;
  if (!graph.edges.length) { svg.removeAttribute("width"); svg.setAttribute("height", 240); return; }
  const { pos, width, height, step } = layout(graph);
  // Edges that skip a column or go back run below every node.
  let low = Math.max(...Object.values(pos).map(p => p.y)) + NODE_H;
  const defs = el("defs");
  for (const h of ["ok", "warn", "bad", "idle"]) {
    const m = el("marker", { id: "arrow-" + h, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 11, markerHeight: 11, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
    const colour = getComputedStyle(document.documentElement).getPropertyValue(
      "--" + (h === "idle" ? "network" : h));
    m.append(el("path", { d: "M0,0 L10,5 L0,10 z", fill: colour.trim() }));
    defs.append(m);
  }
  svg.append(defs);
  const edgeLayer = el("g"), labelLayer = el("g"), nodeLayer = el("g");
  const labels = [];
  svg.append(edgeLayer, nodeLayer, labelLayer);
  for (const e of graph.edges) {
    const a = pos[e.source], b = pos[e.target];
    const h = health(e);
    const g = el("g", { class: `edge ${h}${e.id === selected ? " selected" : ""}`,
      "data-edge-id": e.id, "data-source": e.source, "data-target": e.target });
    let d, mx, my;
    if (e.source === e.target) {
      const x = a.x + NODE_W, y = a.y + NODE_H / 2;
      d = `M${x},${y - 10} C${x + 60},${y - 60} ${x + 60},${y + 60} ${x},${y + 10}`;
      mx = x + 48; my = y;
    } else if (b.x > a.x && b.x - a.x < step * 1.5) {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 2, y2 = b.y + NODE_H / 2;
      const c = (x2 - x1) / 2;
      d = `M${x1},${y1} C${x1 + c},${y1} ${x2 - c},${y2} ${x2},${y2}`;
      // Labels past the middle, where edges from one node have drawn apart.
      [mx, my] = bezier([x1, y1], [x1 + c, y1], [x2 - c, y2], [x2, y2], 0.6);
    } else {
      const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2, y2 = b.y + NODE_H + 2;
      low += 26;
      d = `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`;
      [mx, my] = bezier([x1, y1], [x1, low], [x2, low], [x2, y2], 0.5);
    }
    const stroke = Math.min(6, 1.5 + Math.log10(1 + e.rps * 10));
    g.append(el("path", { class: "hit", d }),
      el("path", { class: "line", d, "stroke-width": stroke.toFixed(1), "marker-end": `url(#arrow-${h})` }));
    g.append(el("title", {}, `${e.requests} requests, ${e.errors} errors` +
      (e.tcp_connections ? `, ${e.tcp_connections} TCP connections` : "")));
    edgeLayer.append(g);
    const lines = e.requests
      ? [[["rps", `${fmtRps(e.rps)} rps`], ["err", ` · ${fmtPct(e.error_percent)} err`]],
         [["p95", `p95 ${fmtMs(e.p95_ms)}`]]]
      : [[["tcp", `${e.tcp_connections} TCP conn.`]]];
    labels.push({ e, g, x: mx, y: my, lines, w: 128, h: lines.length * 14 + 8 });
  }
  // Labels that would overlap move down, below the one above them.
  labels.sort((a, b) => a.y - b.y || a.x - b.x);
  labels.forEach((l, i) => {
    for (const m of labels.slice(0, i)) {
      if (Math.abs(l.x - m.x) < (l.w + m.w) / 2 + 4 && Math.abs(l.y - m.y) < (l.h + m.h) / 2 + 4) {
        l.y = m.y + (l.h + m.h) / 2 + 4;
      }
    }
  });
  let bottom = Math.max(height, low + PAD);
  for (const { e, g, x, y, lines, w, h } of labels) {
    // The label goes on top of every line, in the same colours as its edge.
    const label = el("g", { class: "label", transform: `translate(${x},${y})` });
    label.append(el("rect", { x: -w / 2, y: -h / 2, width: w, height: h, rx: 6 }));
    lines.forEach((parts, i) => {
      const t = el("text", { x: 0, y: -h / 2 + 4 + 14 * (i + 1) - 3, "text-anchor": "middle" });
      for (const [cls, text] of parts) t.append(el("tspan", { class: cls }, text));
      label.append(t);
    });
    const lg = el("g", { class: g.getAttribute("class"), "data-edge-label": e.id });
    lg.append(label);
    for (const target of [g, lg]) target.addEventListener("click", () => select(e.id));
    labelLayer.append(lg);
    bottom = Math.max(bottom, y + h / 2 + PAD / 2);
  }
  // Wider than the pane: the pane scrolls, rather than the drawing shrinking.
  svg.setAttribute("viewBox", `0 0 ${width} ${bottom}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", bottom);
  for (const n of graph.nodes) {
    const p = pos[n.id];
    const g = el("g", { class: `node ${n.kind}`, "data-node-id": n.id, "data-kind": n.kind,
      transform: `translate(${p.x},${p.y})` });
    g.append(el("title", {}, `${n.kind} ${n.namespace}/${n.name}`));
    g.append(el("rect", { width: NODE_W, height: NODE_H, rx: n.kind === "service" ? NODE_H / 2 : 8 }));
    const kind = n.kind === "network" ? "host" : n.kind;
    g.append(el("text", { class: "kind", x: NODE_W / 2, y: 14, "text-anchor": "middle" }, kind));
    g.append(el("text", { class: "name", x: NODE_W / 2, y: 31, "text-anchor": "middle" }, short(n.name, 22)));
    g.append(el("text", { class: "ns", x: NODE_W / 2, y: 45, "text-anchor": "middle" },
      n.namespace === "-" ? "" : short(n.namespace, 26)));
    nodeLayer.append(g);
  }
}

function nodeName(graph, id) {
  const n = graph.nodes.find(n => n.id === id);
  if (!n) return id;
  return n.namespace === "-" ? n.name : `${n.namespace}/${n.name}`;
}

function drawDetails(graph) {
  const e = graph.edges.find(e => e.id === selected);
  document.getElementById("hint").hidden = !!e;
  document.getElementById("edge").hidden = !e;
  if (!selected) {
    document.getElementById("hint").textContent = "Select an edge to see its HTTP requests.";
  } else if (!e) {
    document.getElementById("hint").textContent = "The selected edge had no requests in the window.";
  }
  if (!e) return;
  document.getElementById("edge-title").textContent =
    `${nodeName(graph, e.source)} → ${nodeName(graph, e.target)}`;
  const h = health(e);
  const stats = [
    ["Requests", String(e.requests), "requests"],
    ["Requests/s", fmtRps(e.rps), "rps"],
    ["Errors", fmtPct(e.error_percent), "errors", h === "ok" || h === "idle" ? "" : h],
    ["p95", fmtMs(e.p95_ms), "p95"],
    ["Mean", fmtMs(e.mean_ms), "mean"],
    ["Max", fmtMs(e.max_ms), "max"],
  ];
  if (e.tcp_connections) stats.push(["TCP connections", String(e.tcp_connections), "tcp"]);
  document.getElementById("edge-stats").replaceChildren(...stats.map(([k, v, key, cls]) => {
    const d = el("div", { "data-stat": key });
    d.append(el("dt", {}, k), el("dd", cls ? { class: cls } : {}, v));
    return d;
  }));
  const body = document.querySelector("#http-table tbody");
  body.replaceChildren(...e.http.map(r => {
    const tr = el("tr", r.other ? { class: "other" } : {});
    const code = el("span", { class: `code c${String(r.response_code)[0]}` }, String(r.response_code));
    const cells = [
      el("td", { class: "method" }, r.method),
      el("td", { class: "path" }, r.other ? `(other: more than ${graph.max_rows} kinds)` : r.path),
      el("td", { class: "response-code" }),
      el("td", { class: "num count" }, String(r.count)),
      el("td", { class: "num mean" }, fmtMs(r.mean_ms)),
      el("td", { class: "num max" }, fmtMs(r.max_ms)),
    ];
    if (r.other) cells[2].textContent = "*"; else cells[2].append(code);
    tr.append(...cells);
    return tr;
  }));
  if (!e.http.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: 6, class: "muted" }, "No HTTP requests on this edge (TCP only)."));
    body.append(tr);
  }
  const top = e.top_urls.length ? e.top_urls[0].count : 1;
  document.querySelector("#top-urls tbody").replaceChildren(...e.top_urls.map(u => {
    const tr = el("tr");
    const path = el("td", { class: "path" }, u.path);
    path.append(el("div", { class: "bar", style: `width:${(100 * u.count / top).toFixed(0)}%` }));
    tr.append(path, el("td", { class: "num count" }, String(u.count)));
    return tr;
  }));
}

function select(id) {
  selected = id;
  if (last) { drawGraph(last); drawDetails(last); }
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/api/graph", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    last = await response.json();
    document.getElementById("window").textContent =
      `last ${last.window_seconds} s · ${last.nodes.length} nodes · ${last.edges.length} edges`;
    drawGraph(last);
    drawDetails(last);
    status.className = "status live";
    status.textContent = "live · " + new Date().toLocaleTimeString();
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (err) {
    status.className = "status down";
    status.textContent = "cannot reach the collector";
  }
  setTimeout(poll, POLL_MS);
}

window.addEventListener("resize", () => { if (last) drawGraph(last); });
poll();
