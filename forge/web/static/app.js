// forge serve: draws /api/now and /api/history. Values that came from the hosts (names,
// labels, reasons) are only ever set as text (textContent), never parsed as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
let period = "24h";
let firstData = true;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function td(child, cls) {
  const e = el("td", null, cls);
  if (child instanceof Node) e.appendChild(child); else e.textContent = String(child);
  return e;
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

function bar(pct) {
  const wrap = el("span");
  const b = el("span", null, "bar");
  const i = document.createElement("i");
  i.style.width = `${Math.max(0, Math.min(100, pct))}%`;
  b.appendChild(i);
  wrap.append(b, el("span", `${Math.round(pct)} %`));
  return wrap;
}

function gib(mib) { return (mib / 1024).toFixed(0); }

function holderOf(g) {
  const procs = g.processes.map(p => `${p.env_owner || p.user || "?"}${p.env ? ` [${p.env}]` : ""} ${p.name.split("/").pop() || "?"}:${p.pid}`);
  if (procs.length) return procs.join(", ");
  if (g.held_by) return `${g.held_by.owner || "?"} [${g.held_by.env || "?"}]`;
  return "-";
}

function card(label, value, cls) {
  const c = el("div", null, "card");
  const b = el("b", value, cls);
  b.dataset.value = String(value);
  c.append(b, el("span", label, "dim"));
  return c;
}

function drawNow(now) {
  const status = document.getElementById("status");
  if (!now.fleet) {
    status.textContent = now.error ? `probe failed: ${now.error}` : "probing the fleet…";
    return;
  }
  const f = now.fleet;
  const when = new Date(now.at * 1000).toLocaleTimeString();
  status.textContent = `probed at ${when} in ${now.took_s.toFixed(1)} s · refreshed every ${now.refresh_s} s` +
    (now.error ? ` · last probe failed: ${now.error}` : "");
  const s = f.summary;
  const summary = document.getElementById("summary");
  summary.replaceChildren(
    card("GPUs free", s.free, s.free ? "free" : "busy"),
    card("GPUs", s.gpus),
    card("hosts answered", `${s.answered}/${s.hosts}`, s.answered < s.hosts ? "bad" : ""),
  );
  summary.querySelector(".card:nth-child(1) b").id = "free-count";
  summary.querySelector(".card:nth-child(2) b").id = "gpu-count";
  summary.querySelector(".card:nth-child(3) b").id = "answered-count";

  fill("hosts", f.hosts.map(h => {
    const tr = document.createElement("tr");
    tr.dataset.host = h.name;
    if (!h.answered || h.status !== "ok") {
      tr.append(td(h.name), td("-", "bad"), td(""), td(""), td(""), td(`${h.status}: ${h.reason || ""}`, "bad wrap"));
      return tr;
    }
    const free = h.gpus.filter(g => g.free).length;
    const used = h.gpus.reduce((a, g) => a + (g.memory_used_mib || 0), 0);
    const total = h.gpus.reduce((a, g) => a + (g.memory_total_mib || 0), 0);
    const utils = h.gpus.map(g => g.utilization_gpu_pct).filter(u => u !== null);
    const util = utils.length ? utils.reduce((a, u) => a + u, 0) / utils.length : 0;
    const models = [...new Set(h.gpus.map(g => g.name || "?"))].join(", ");
    const holders = [...new Set(h.gpus.filter(g => !g.free).map(holderOf).filter(x => x !== "-"))].join("; ");
    tr.append(td(h.name), td(`${free}/${h.gpus.length}`, free ? "free" : "busy"), td(models),
      td(`${gib(used)} / ${gib(total)} GiB`), td(bar(util)), td(holders || "-", "wrap"));
    return tr;
  }));

  const gpuRows = [];
  for (const h of f.hosts) {
    for (const g of h.gpus) {
      const tr = row([
        td(h.name), td(g.index), td(g.name || "?"),
        td(`${g.memory_used_mib ?? "?"} / ${g.memory_total_mib ?? "?"} MiB`),
        td(g.utilization_gpu_pct === null ? "n/a" : `${g.utilization_gpu_pct} %`),
        td(holderOf(g), "wrap"),
        td(g.free ? "free" : `busy: ${g.reason}`, g.free ? "free" : "busy wrap"),
      ]);
      tr.dataset.uuid = g.uuid;
      tr.dataset.free = String(g.free);
      gpuRows.push(tr);
    }
  }
  fill("gpus", gpuRows);
  if (firstData) {
    firstData = false;
    performance.mark("forge-first-data");
    document.body.dataset.ready = "now";
  }
}

function drawChart(points) {
  const chart = document.getElementById("chart");
  const W = 1000, H = 220, L = 36, B = 20;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  if (points.length < 2) { chart.replaceChildren(svg); return; }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const top = Math.max(1, ...points.map(p => p.observed)) * 1.1;
  const x = t => L + (W - L - 4) * (t - t0) / Math.max(1, t1 - t0);
  const y = v => (H - B) - (H - B - 6) * v / top;
  const line = (key, cls) => {
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("points", points.map(p => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "));
    pl.setAttribute("class", cls);
    return pl;
  };
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute("points", [`${x(t0)},${y(0)}`, ...points.map(p => `${x(p.t).toFixed(1)},${y(p.held).toFixed(1)}`), `${x(t1)},${y(0)}`].join(" "));
  area.setAttribute("class", "held");
  const label = (tx, ty, text) => { const t = document.createElementNS(SVG, "text"); t.setAttribute("x", tx); t.setAttribute("y", ty); t.textContent = text; return t; };
  svg.append(area, line("observed", "seen"), line("worked", "work"), line("free", "freeline"),
    label(2, 12, `${Math.round(top / 1.1)} GPUs`), label(2, H - 24, "0"),
    label(L, H - 4, new Date(t0 * 1000).toLocaleString()), label(W - 160, H - 4, new Date(t1 * 1000).toLocaleString()));
  chart.replaceChildren(svg);
}

function drawHistory(h) {
  const status = document.getElementById("history-status");
  const unit = h.step_s >= 86400 ? "day" : "hour";
  status.textContent = h.error ? h.error
    : (h.points || []).length < 2 ? `the chart starts once \`forge record\` has recorded two whole ${unit}s of this period`
    : `held (area), working (red), free (green), seen (grey): average GPUs per ${unit}`;
  drawChart(h.points || []);
  fill("users", (h.users || []).map(u => row([td(u.env ? `${u.user} [${u.env}]` : u.user), td(u.held_gpu_h.toFixed(1)),
    td(u.worked_gpu_h.toFixed(1)), td(u.held_gpu_h ? `${Math.round(100 * u.worked_gpu_h / u.held_gpu_h)} %` : "-"), td(u.idle_gpu_h.toFixed(1))])));
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  return r.json();
}

async function refresh() {
  try {
    drawNow(await getJSON("/api/now"));
  } catch (e) {
    document.getElementById("status").textContent = `cannot reach forge serve: ${e}`;
  }
}

async function refreshHistory() {
  try { drawHistory(await getJSON(`/api/history?since=${encodeURIComponent(period)}`)); }
  catch (e) { document.getElementById("history-status").textContent = `cannot read the history: ${e}`; }
}

function periods() {
  const box = document.getElementById("periods");
  for (const p of ["24h", "7d", "30d", "1y"]) {
    const b = el("button", p);
    b.type = "button";
    b.setAttribute("aria-pressed", String(p === period));
    b.addEventListener("click", () => {
      period = p;
      for (const other of box.children) other.setAttribute("aria-pressed", String(other === b));
      refreshHistory();
    });
    box.appendChild(b);
  }
}

async function main() {
  periods();
  const first = await getJSON("/api/now").catch(() => null);
  if (first) drawNow(first);
  refreshHistory();
  const every = Math.max(1, (first && first.refresh_s) || 5) * 1000;
  setInterval(refresh, every);
  setInterval(refreshHistory, 60000);
}

main();
