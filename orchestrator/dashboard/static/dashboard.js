// chimera's dashboard: polls GET /dashboard/state every second and draws it. No build step:
// plain browser JavaScript, with uPlot (vendored beside this file) for the one time series.
"use strict";
(function () {
  const POLL_MS = 1000;
  const KEEP_POINTS = 600; // the activity chart's history (ten minutes at one poll a second)
  const GIB = 1024 ** 3;
  const STATE_COLORS = {
    awake: "#2e9e5b", draining: "#8fbf3f", parked: "#b8bec6", wake_due: "#f5cf8f", waking: "#f0a030", parking: "#e07b39",
    starting: "#5b8def", pending: "#9db8f0", failed: "#d9453d", stopped: "#eceef1",
  };
  const KINDS = [["weights", 45, 60], ["runtime", 32, 35], ["kv_used", 60, 65], ["kv_mapped", 84, 70]];
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const hue = (name) => { let h = 0; for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360; return h; };
  const kindColor = (model, kind) => {
    const k = KINDS.find((x) => x[0] === kind) || KINDS[0];
    return `hsl(${hue(model)}, ${k[2]}%, ${k[1]}%)`;
  };
  const gib = (b) => (b / GIB).toFixed(1);
  const secs = (s) => (s === null || s === undefined ? "–" : s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(2) + " s");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString();

  // --- activity chart (uPlot) ---
  const series = { t: [], awake: [], parked: [], moving: [], failed: [], rate: [] };
  let lastTotal = null, lastT = null, chart = null;
  function recordActivity(s) {
    const count = { awake: 0, parked: 0, moving: 0, failed: 0 };
    let total = 0;
    for (const m of s.models) {
      total += m.requests;
      for (const i of m.instances) {
        if (i.state === "draining") count.awake++; // awake, taking no new request
        else if (i.state === "awake" || i.state === "parked" || i.state === "failed") count[i.state]++;
        else if (i.state !== "stopped") count.moving++;
      }
    }
    const rate = lastTotal === null || s.now <= lastT ? null : Math.max(0, (total - lastTotal) / (s.now - lastT));
    lastTotal = total; lastT = s.now;
    series.t.push(s.now);
    for (const k of ["awake", "parked", "moving", "failed"]) series[k].push(count[k]);
    series.rate.push(rate);
    if (series.t.length > KEEP_POINTS) for (const k in series) series[k].shift();
    const data = [series.t, series.awake, series.parked, series.moving, series.failed, series.rate];
    if (!chart && window.uPlot) {
      const box = $("#activity");
      chart = new uPlot({
        width: box.clientWidth || 900, height: 160,
        scales: { n: {}, r: {} },
        axes: [{}, { scale: "n", label: "instances" }, { scale: "r", side: 1, label: "req/s", grid: { show: false } }],
        series: [
          {},
          { label: "awake", scale: "n", stroke: STATE_COLORS.awake, width: 2 },
          { label: "parked", scale: "n", stroke: "#8a929c", width: 2 },
          { label: "starting / waking / parking", scale: "n", stroke: STATE_COLORS.waking, width: 2 },
          { label: "failed", scale: "n", stroke: STATE_COLORS.failed, width: 2 },
          { label: "requests/s", scale: "r", stroke: "#5b8def", width: 1, dash: [4, 3] },
        ],
      }, data, box);
      window.addEventListener("resize", () => chart.setSize({ width: box.clientWidth, height: 160 }));
    } else if (chart) {
      chart.setData(data);
    }
  }

  // --- GPU memory ---
  function drawLegend() {
    const legend = $("#legend");
    for (const [kind] of KINDS) {
      const item = el("span");
      const swatch = el("i");
      swatch.style.background = `hsl(210, ${KINDS.find((k) => k[0] === kind)[2]}%, ${KINDS.find((k) => k[0] === kind)[1]}%)`;
      item.append(swatch, kind.replace("_", " "));
      legend.append(item);
    }
    const free = el("span"); const sw = el("i"); sw.style.background = "#eceef1"; free.append(sw, "free");
    legend.append(free, el("span", "", "colour: model"));
  }
  function drawGpus(s) {
    const box = $("#gpus");
    box.replaceChildren();
    for (const g of s.gpus) {
      const row = el("div", "gpu");
      row.dataset.gpu = g.gpu;
      const bar = el("div", "bar");
      for (const [inst, model, kind, bytes] of g.parts) {
        const seg = el("span");
        seg.style.width = (100 * bytes / g.capacity).toFixed(2) + "%";
        seg.style.background = kindColor(model, kind);
        seg.title = `${inst} (${model}): ${kind.replace("_", " ")} ${gib(bytes)} GiB`;
        bar.append(seg);
      }
      const inHost = (g.host || []).reduce((a, p) => a + p[3], 0);
      const host = el("span", "host", inHost ? gib(inHost) + " in host" : "");
      host.title = (g.host || []).map(([inst, model, kind, b]) => `${inst} (${model}): ${kind.replace("_", " ")} ${gib(b)} GiB`).join("\n");
      row.append(el("span", "name", "GPU " + g.gpu), bar, el("span", "free", gib(g.free) + " free"), host);
      row.title = `GPU ${g.gpu}: ${gib(g.capacity - g.free)} of ${gib(g.capacity)} GiB`;
      box.append(row);
    }
    drawHost(s.host || { held: 0, parts: [] });
  }
  // Host RAM pinned by weight backups: parked models' weights, and those kept after a wake.
  function drawHost(h) {
    const box = $("#host");
    const label = { parked_weights: "parked", retained_weights: "retained" };
    const parts = h.parts.map(([inst, model, kind, b]) => `${inst} ${label[kind] || kind} ${gib(b)}`);
    box.textContent = `Host RAM in weight backups: ${gib(h.held)} GiB` + (parts.length ? " · " + parts.join(" · ") : "");
    box.dataset.held = String(h.held);
  }

  // --- models ---
  const rows = new Map();
  // The strips span the window, or the time since the first recorded change if shorter (a young
  // deployment fills the strip instead of a sliver at its right end).
  function span(s) {
    let first = s.now;
    for (const m of s.models) for (const i of m.instances) {
      const tl = m.timeline[i.id];
      if (tl && tl.length) first = Math.min(first, tl[0][0]);
    }
    return Math.max(10, Math.min(s.window_s, s.now - first));
  }
  function strip(changes, now, window_s, multi) {
    const s = el("div", multi ? "strip multi" : "strip");
    const start = now - window_s;
    changes.forEach(([t, state], i) => {
      const end = i + 1 < changes.length ? changes[i + 1][0] : now;
      const a = Math.max(t, start), b = Math.max(end, start);
      if (b <= a && i + 1 < changes.length) return;
      const seg = el("span");
      seg.style.left = (100 * (a - start) / window_s).toFixed(2) + "%";
      seg.style.width = Math.max(0.3, 100 * (b - a) / window_s).toFixed(2) + "%";
      seg.style.background = STATE_COLORS[state] || "#ccc";
      seg.title = `${state} from ${clock(t)}`;
      s.append(seg);
    });
    return s;
  }
  function cell(row, cls, text, title) {
    const c = row.querySelector("td." + cls);
    c.textContent = text;
    if (title !== undefined) c.title = title;
    return c;
  }
  function drawModels(s) {
    const body = $("#models tbody");
    const names = s.models.map((m) => m.name).join("\n");
    if (body.dataset.names !== names) {
      body.replaceChildren(); rows.clear();
      for (const m of s.models) {
        const tr = el("tr");
        tr.dataset.model = m.name;
        for (const cls of ["name", "state", "timeline", "requests", "in_flight", "held", "shed", "ttft", "tpot", "attainment", "gpu_seconds", "wakes", "parks"]) tr.append(el("td", cls));
        body.append(tr); rows.set(m.name, tr);
      }
      body.dataset.names = names;
    }
    const shown = span(s);
    $("#window").textContent = `(timeline: the last ${shown < 120 ? Math.round(shown) + " s" : Math.round(shown / 60) + " min"})`;
    for (const m of s.models) {
      const tr = rows.get(m.name);
      const where = m.instances.map((i) => `${i.id} on GPU ${i.gpus.join("+")}: ${i.state}${i.draining ? " (" + i.draining + ")" : ""}${i.error ? " (" + i.error + ")" : ""}`).join("\n");
      const held = heldBy(s, m.name);
      cell(tr, "name", m.name, held.length ? `weights on ${held.join(", ")}\n${where}` : where);
      tr.dataset.heldBy = held.join(" ");
      const st = cell(tr, "state", m.state, where);
      st.className = "state state-" + m.state;
      const tl = tr.querySelector("td.timeline");
      const multi = m.instances.length > 1;
      tl.replaceChildren(...m.instances.map((i) => strip(m.timeline[i.id] || [], s.now, shown, multi)));
      cell(tr, "requests", m.requests);
      cell(tr, "in_flight", m.in_flight);
      cell(tr, "held", m.held);
      cell(tr, "shed", m.shed);
      const t = m.ttft;
      const ttft = cell(tr, "ttft", t.count ? `${secs(t.p50)} / ${secs(t.p99)} (${secs(t.slo)})` : `– (${secs(t.slo)})`,
        `${t.count} streamed requests since start`);
      ttft.classList.toggle("late", t.p99 !== null && t.slo !== null && t.p99 > t.slo);
      const p = m.tpot;
      const tpot = cell(tr, "tpot", p.count ? `${secs(p.p50)} / ${secs(p.p99)} (${secs(p.slo)})` : `– (${secs(p.slo)})`,
        `${p.count} streamed requests read to their end with two tokens or more`);
      tpot.classList.toggle("late", p.p99 !== null && p.slo !== null && p.p99 > p.slo);
      const a = m.attainment;
      const pct = (x) => (x === null ? "–" : `${Math.round(100 * x)}%`);
      cell(tr, "attainment", `${pct(a.joint)}`, `TTFT ${pct(a.ttft)}, TPOT ${pct(a.tpot)}, both ${pct(a.joint)}`);
      cell(tr, "gpu_seconds", m.gpu_seconds.toFixed(1), "GPU-seconds since start, split by memory share");
      cell(tr, "wakes", m.wakes.map((x) => x.toFixed(2)).join(" ") || "–");
      cell(tr, "parks", m.parks.map((x) => x.toFixed(2)).join(" ") || "–");
    }
  }

  // --- shape pools: which weights each pooled server holds (docs/pools.md) ---
  function drawHolds(s) {
    const holds = Object.entries(s.holds || {});
    $("#pools-section").hidden = !holds.length;
    $("#holds").replaceChildren(...holds.map(([server, h]) => {
      const li = el("li");
      li.dataset.server = server;
      li.append(el("b", "", server), ` holds ${h.models.join(", ") || "no listed model"}`, el("small", "", ` (${h.model_path})`));
      return li;
    }));
  }
  // the pooled servers that hold a model's weights now, for its row
  function heldBy(s, model) {
    return Object.entries(s.holds || {}).filter(([, h]) => h.models.includes(model)).map(([server]) => server);
  }

  function drawDecisions(s) {
    const list = $("#decisions");
    list.replaceChildren(...s.decisions.map(([t, msg]) => {
      const li = el("li"); li.append(el("time", "", clock(t)), msg); return li;
    }));
    if (!s.decisions.length) list.append(el("li", "", "none yet"));
  }

  function draw(s) {
    const awake = s.models.filter((m) => m.state === "awake").length;
    const parked = s.models.filter((m) => m.state === "parked").length;
    $("#summary").textContent = `mode ${s.mode} · ${s.models.length} models on ${s.gpus.length} GPUs · ${awake} awake · ${parked} parked`;
    drawGpus(s);
    drawHolds(s);
    drawModels(s);
    drawDecisions(s);
    recordActivity(s);
  }

  async function poll() {
    const status = $("#status");
    try {
      const r = await fetch("/dashboard/state", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const s = await r.json();
      draw(s);
      status.textContent = "updated " + clock(s.now);
      status.className = "status";
      document.body.dataset.updated = String(s.now);
    } catch (e) {
      status.textContent = "chimera does not answer: " + e.message;
      status.className = "status error";
    }
    setTimeout(poll, POLL_MS);
  }
  drawLegend();
  poll();
})();
