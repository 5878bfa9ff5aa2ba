// FedRad dashboards: draws the page model from /api/page (shared/dashboard/widgets.py) and polls for changes.
// Every value is written with textContent or as an SVG number attribute: nothing from the server becomes markup.
// Served from the package; no library, no CDN (hospital machines are often offline).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  let lastText = null;
  let refreshMs = 2000;
  let failures = 0;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v.toLocaleString("en-US");
      return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
    }
    return String(v);
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => (hi - lo) / s <= count) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
    return ticks;
  }

  function legend(series) {
    const box = el("div", { class: "legend" });
    series.forEach((s, i) => {
      const item = el("span", { class: "legend-item", "data-series": s.name });
      item.appendChild(el("span", { class: "swatch", style: null })).style.background = PALETTE[i % PALETTE.length];
      item.appendChild(document.createTextNode(s.name));
      box.appendChild(item);
    });
    return box;
  }

  function frame(w, h, m, xs, ys, xLabel, yLabel) {
    const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img" });
    const x = (v) => m.l + ((v - xs[0]) / (xs[1] - xs[0] || 1)) * (w - m.l - m.r);
    const y = (v) => h - m.b - ((v - ys[0]) / (ys[1] - ys[0] || 1)) * (h - m.t - m.b);
    for (const t of niceTicks(ys[0], ys[1], 5)) {
      root.appendChild(svg("line", { x1: m.l, x2: w - m.r, y1: y(t), y2: y(t), class: "grid" }));
      root.appendChild(svg("text", { x: m.l - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, fmt(t)));
    }
    root.appendChild(svg("text", { x: 12, y: m.t - 8, class: "axis-label" }, yLabel || ""));
    root.appendChild(svg("text", { x: w - m.r, y: h - 6, class: "axis-label", "text-anchor": "end" }, xLabel || ""));
    return { root, x, y };
  }

  function lineChart(w) {
    const box = el("figure", { class: "widget chart-box" });
    if (w.title) box.appendChild(el("figcaption", {}, w.title));
    const pts = w.series.flatMap((s) => s.points);
    const ysAll = pts.map((p) => p[1]).filter((v) => v !== null);
    if (ysAll.length === 0) {
      box.appendChild(el("p", { class: "empty" }, "no points yet"));
      return box;
    }
    const xsAll = pts.map((p) => p[0]);
    let xs = [Math.min(...xsAll), Math.max(...xsAll)];
    if (xs[0] === xs[1]) xs = [xs[0] - 1, xs[1] + 1];
    let ys = [Math.min(...ysAll), Math.max(...ysAll)];
    if (ys[0] >= 0 && ys[1] <= 1 && ys[1] - ys[0] > 0.2) ys = [0, 1];
    if (ys[0] === ys[1]) ys = [ys[0] - 1, ys[1] + 1];
    const pad = (ys[1] - ys[0]) * 0.05;
    ys = [ys[0] - pad, ys[1] + pad];
    const f = frame(640, 260, { l: 56, r: 16, t: 24, b: 30 }, xs, ys, w.x_label, w.y_label);
    const integral = xsAll.every(Number.isInteger);  // rounds: label whole numbers only
    for (const t of niceTicks(xs[0], xs[1], Math.min(10, xsAll.length + 1))) {
      if (!integral || Number.isInteger(t)) {
        f.root.appendChild(svg("text", { x: f.x(t), y: 260 - 12, class: "tick", "text-anchor": "middle" }, fmt(t)));
      }
    }
    w.series.forEach((s, i) => {
      const colour = PALETTE[i % PALETTE.length];
      let d = "";
      let pen = false;
      for (const [px, py] of s.points) {
        if (py === null) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${f.x(px).toFixed(1)},${f.y(py).toFixed(1)}`;
        pen = true;
      }
      if (d) f.root.appendChild(svg("path", { d, class: "series-line", stroke: colour, "data-series": s.name }));
      for (const [px, py] of s.points) {
        if (py === null) continue;
        const dot = svg("circle", {
          cx: f.x(px), cy: f.y(py), r: 3.5, fill: colour, class: "point", "data-series": s.name, "data-x": px, "data-y": py,
        });
        dot.appendChild(svg("title", {}, `${s.name}: ${w.x_label || "x"} ${fmt(px)}, ${fmt(py)}`));
        f.root.appendChild(dot);
      }
    });
    box.appendChild(f.root);
    if (w.series.length > 1 || (w.series[0] && w.series[0].name)) box.appendChild(legend(w.series));
    return box;
  }

  function barChart(w) {
    const box = el("figure", { class: "widget chart-box" });
    if (w.title) box.appendChild(el("figcaption", {}, w.title));
    if (w.groups.length === 0 || w.series.length === 0) {
      box.appendChild(el("p", { class: "empty" }, "nothing to show yet"));
      return box;
    }
    const totals = w.groups.map((_, g) =>
      w.stacked ? w.series.reduce((a, s) => a + (s.values[g] || 0), 0) : Math.max(...w.series.map((s) => s.values[g] || 0)));
    const top = Math.max(...totals, 0) || 1;
    const width = Math.max(640, 40 + w.groups.length * 36);
    const m = { l: 64, r: 16, t: 24, b: 56 };
    const f = frame(width, 280, m, [0, w.groups.length], [0, top * 1.05], "", w.y_label);
    const slot = (width - m.l - m.r) / w.groups.length;
    const per = w.stacked ? 1 : w.series.length;
    w.groups.forEach((g, gi) => {
      let base = 0;
      w.series.forEach((s, si) => {
        const v = s.values[gi];
        if (v === null || v === undefined) return;
        const bw = (slot * 0.8) / per;
        const x0 = m.l + gi * slot + slot * 0.1 + (w.stacked ? 0 : si * bw);
        const y0 = f.y(base + v);
        const rect = svg("rect", {
          x: x0, y: y0, width: Math.max(bw - 1, 1), height: Math.max(f.y(base) - y0, 0), fill: PALETTE[si % PALETTE.length],
          class: "bar", "data-series": s.name, "data-group": g, "data-value": v,
        });
        rect.appendChild(svg("title", {}, `${g} · ${s.name}: ${fmt(v)}`));
        f.root.appendChild(rect);
        if (w.stacked) base += v;
      });
      const label = svg("text", {
        x: m.l + gi * slot + slot / 2, y: 280 - m.b + 14, class: "tick", "text-anchor": "end",
        transform: `rotate(-30 ${m.l + gi * slot + slot / 2} ${280 - m.b + 14})`,
      }, g.length > 18 ? g.slice(0, 17) + "…" : g);
      f.root.appendChild(label);
    });
    box.appendChild(f.root);
    if (w.series.length > 1 || (w.series[0] && w.series[0].name)) box.appendChild(legend(w.series));
    return box;
  }

  function cellNode(tag, value, column) {
    const td = el(tag, { "data-col": column });
    if (value !== null && typeof value === "object") {
      td.textContent = value.text;
      if (value.level) { td.classList.add(`lvl-${value.level}`); td.setAttribute("data-level", value.level); }
    } else {
      td.textContent = fmt(value);
      if (typeof value === "number") td.classList.add("num");
    }
    return td;
  }

  function tableWidget(w) {
    const box = el("div", { class: "widget table-box" });
    if (w.title) box.appendChild(el("h3", {}, w.title));
    if (w.rows.length === 0) {
      box.appendChild(el("p", { class: "empty" }, w.empty || "nothing yet"));
      return box;
    }
    const t = el("table");
    const head = el("tr");
    for (const c of w.columns) head.appendChild(el("th", { scope: "col" }, c));
    t.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    for (const row of w.rows) {
      const tr = el("tr");
      row.forEach((v, i) => tr.appendChild(cellNode("td", v, w.columns[i])));
      body.appendChild(tr);
    }
    t.appendChild(body);
    box.appendChild(t);
    return box;
  }

  const RENDER = {
    tiles(w) {
      const box = el("div", { class: "widget tiles" });
      for (const it of w.items) {
        const tile = el("div", { class: `tile${it.level ? " lvl-" + it.level : ""}`, "data-tile": it.label });
        tile.appendChild(el("div", { class: "tile-value" }, it.value));
        tile.appendChild(el("div", { class: "tile-label" }, it.label));
        box.appendChild(tile);
      }
      return box;
    },
    banner(w) {
      return el("div", { class: `widget banner lvl-${w.level}`, role: w.level === "error" ? "alert" : "status", "data-level": w.level }, w.text);
    },
    table: tableWidget,
    line: lineChart,
    bars: barChart,
    text(w) { return el("pre", { class: "widget text" }, w.text); },
    kv(w) {
      const box = el("div", { class: "widget kv" });
      if (w.title) box.appendChild(el("h3", {}, w.title));
      const dl = el("dl");
      for (const [k, v] of w.items) {
        dl.appendChild(el("dt", {}, k));
        dl.appendChild(el("dd", { "data-key": k }, v));
      }
      box.appendChild(dl);
      return box;
    },
    links(w) {
      const box = el("div", { class: "widget links" });
      if (w.title) box.appendChild(el("h3", {}, w.title));
      const ul = el("ul");
      for (const it of w.items) {
        const href = String(it.href);
        const safe = href.startsWith("/") && !href.startsWith("//");
        const li = el("li");
        li.appendChild(safe ? el("a", { href, target: "_blank", rel: "noopener" }, it.text) : el("span", {}, it.text));
        ul.appendChild(li);
      }
      box.appendChild(ul);
      return box;
    },
  };

  function render(model) {
    document.title = model.title;
    document.getElementById("title").textContent = model.title;
    document.getElementById("subtitle").textContent = model.subtitle || "";
    const main = document.getElementById("sections");
    const fresh = document.createDocumentFragment();
    const nav = el("nav", { id: "toc" });
    for (const s of model.sections) {
      const a = el("a", { href: `#s-${s.id}` }, s.title);
      nav.appendChild(a);
      const sec = el("section", { id: `s-${s.id}`, "data-section": s.id });
      sec.appendChild(el("h2", {}, s.title));
      if (s.note) sec.appendChild(el("p", { class: "note" }, s.note));
      for (const w of s.widgets) {
        const draw = RENDER[w.kind];
        const node = draw ? draw(w) : el("p", { class: "empty" }, `(${w.kind}: not shown by this version)`);
        node.setAttribute("data-widget", w.id);
        node.setAttribute("data-kind", w.kind);
        sec.appendChild(node);
      }
      fresh.appendChild(sec);
    }
    main.replaceChildren(nav, fresh);
  }

  function setConnection(state, text) {
    const c = document.getElementById("connection");
    c.setAttribute("data-state", state);
    c.textContent = text;
  }

  async function poll() {
    try {
      const reply = await fetch("/api/page", { cache: "no-store", credentials: "same-origin" });
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      const text = await reply.text();
      const model = JSON.parse(text);
      const { generated, ...content } = model;
      const key = JSON.stringify(content);
      if (key !== lastText) {
        render(model);
        lastText = key;
      }
      failures = 0;
      refreshMs = model.refresh_s > 0 ? model.refresh_s * 1000 : 0;
      setConnection("live", refreshMs ? `live · updated ${generated}` : `updated ${generated}`);
    } catch (err) {
      failures += 1;
      setConnection("lost", `connection lost (${err.message}); retrying`);
    }
    if (refreshMs > 0) setTimeout(poll, failures ? Math.min(30000, 2000 * failures) : refreshMs);
  }

  poll();
})();
