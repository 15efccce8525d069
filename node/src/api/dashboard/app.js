// Troupe dashboard: a single page over the JSON API under /v1. Plain JavaScript, no build step,
// no dependencies. Hash routes:
//   #/workflows?status=&name=&age=          the list
//   #/workflows/ID[/step/STEP[/item/N]]     one workflow: DAG, funnel, history, items, logs
//   #/dlq?workflow=&step=&grep=             dead letters, redrive and discard
//   #/nodes                                 capacity, allocation, drain
//   #/raft                                  the Raft group
//
// Everything shown comes from users (workflow names, errors, logs): it goes into the page as
// text only (textContent, text nodes, setAttribute), never as HTML.
"use strict";

(function () {
  const POLL_MS = 1500;
  const TOKEN_KEY = "troupe.token";
  // An XML namespace name, not an address: nothing is fetched from it.
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ITEMS_PAGE = 20;
  const main = document.getElementById("main");

  // ---------------------------------------------------------------- DOM, text only

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }

  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      el.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return el;
  }

  /** Replaces the children of `el` (skipping null, like `h`). */
  function fill(el, ...kids) {
    el.replaceChildren();
    return append(el, kids);
  }

  /** An HTML element; string children become text nodes. */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    return append(el, kids);
  }

  /** An SVG element. */
  function svg(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    return append(el, kids);
  }

  function badge(status, extra) {
    return h("span", { class: "badge s-" + String(status), "data-status": status }, extra || status);
  }

  function link(hash, ...kids) {
    return h("a", { href: hash }, ...kids);
  }

  const enc = encodeURIComponent;
  const wfHash = (id) => "#/workflows/" + enc(id);
  const stepHash = (id, step) => wfHash(id) + "/step/" + enc(step);
  const itemHash = (id, step, item) => stepHash(id, step) + "/item/" + enc(item);

  // ---------------------------------------------------------------- formatting

  function ago(ms) {
    if (!ms) return "";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    if (s < 86400) return Math.floor(s / 3600) + "h ago";
    return Math.floor(s / 86400) + "d ago";
  }

  function span(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }

  function when(ms) {
    return ms ? new Date(ms).toLocaleString() : "";
  }

  function bytes(n) {
    if (!n) return "0";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) {
      n /= 1024;
      i++;
    }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }

  const cores = (m) => (m / 1000).toFixed(m % 1000 ? 1 : 0);

  /** A short text of any JSON value (node worker entries, params, outputs). */
  function brief(v) {
    if (v === null || v === undefined) return "";
    if (typeof v !== "object") return String(v);
    const t = JSON.stringify(v);
    return t.length > 300 ? t.slice(0, 300) + "…" : t;
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = { accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.authorization = "Bearer " + token;
    let body;
    if (opts.method === "POST") {
      headers["content-type"] = "application/json";
      body = JSON.stringify(opts.body || {});
    }
    let r;
    try {
      r = await fetch(path, { method: opts.method || "GET", headers, body, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "the node did not answer (" + e.message + ")");
    }
    const text = await r.text();
    if (opts.text && r.ok) return { text, headers: r.headers };
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: text };
    }
    const why = (data && data.error) || r.statusText || "error";
    if (r.status === 401) {
      askToken(why);
      throw new ApiError(401, why);
    }
    if (!r.ok) throw new ApiError(r.status, why);
    return data;
  }

  const post = (path, body) => api(path, { method: "POST", body });

  // ---------------------------------------------------------------- token

  const dialog = document.getElementById("token-dialog");

  function askToken(why) {
    document.getElementById("token-why").textContent = why || "";
    if (!dialog.open) dialog.showModal();
    document.getElementById("token-input").focus();
  }

  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = document.getElementById("token-input").value.trim();
    if (!v) return;
    sessionStorage.setItem(TOKEN_KEY, v);
    document.getElementById("token-input").value = "";
    dialog.close();
    whoami();
    render();
  });

  async function whoami() {
    const el = document.getElementById("whoami");
    try {
      const hl = await api("/v1/health");
      const role = hl.role === "server" ? (hl.leader ? "leader" : "follower") : hl.role;
      el.replaceChildren("node " + hl.node + " (" + role + ")");
    } catch (e) {
      el.replaceChildren("node: " + e.message);
    }
    if (sessionStorage.getItem(TOKEN_KEY)) {
      el.append(
        h("button", {
          id: "forget-token",
          onclick: () => {
            sessionStorage.removeItem(TOKEN_KEY);
            whoami();
            render();
          },
        }, "forget token"),
      );
    }
  }

  // ---------------------------------------------------------------- pages and polling

  let current = null;

  function banner(msg) {
    const b = document.getElementById("banner");
    b.hidden = !msg;
    b.className = "banner error";
    b.textContent = msg || "";
  }

  function live(ok) {
    const el = document.getElementById("live");
    el.classList.toggle("stale", !ok);
    el.textContent = (ok ? "● live · " : "● stale · ") + new Date().toLocaleTimeString();
  }

  async function tick() {
    const c = current;
    if (!c || c.busy || document.hidden) return;
    c.busy = true;
    try {
      await c.refresh();
      if (c === current) {
        banner("");
        live(true);
      }
    } catch (e) {
      if (c === current) {
        banner(e.status === 401 ? "This API needs a token." : e.message);
        live(false);
      }
    } finally {
      c.busy = false;
    }
  }

  function route() {
    const raw = location.hash || "#/workflows";
    const q = raw.indexOf("?");
    const path = (q < 0 ? raw : raw.slice(0, q)).replace(/^#/, "");
    const query = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { parts, query };
  }

  /** Keeps the filters in the address without a new render. */
  function setQuery(base, values) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(values)) if (v) q.set(k, v);
    const s = q.toString();
    history.replaceState(null, "", base + (s ? "?" + s : ""));
  }

  function render() {
    const { parts, query } = route();
    const top = parts[0] || "workflows";
    for (const a of document.querySelectorAll("header nav a")) {
      a.classList.toggle("active", a.dataset.nav === top);
    }
    main.replaceChildren();
    banner("");
    let refresh;
    if (top === "workflows" && parts[1]) {
      refresh = workflowPage(parts[1], parts[3] || null, parts[5] === undefined ? null : Number(parts[5]));
    } else if (top === "dlq") refresh = dlqPage(query);
    else if (top === "nodes") refresh = nodesPage();
    else if (top === "raft") refresh = raftPage();
    else refresh = workflowsPage(query);
    current = { refresh, busy: false };
    tick();
  }

  /** Runs an action (a POST), then shows what it did in `out` and refreshes the page. */
  async function act(out, what, fn) {
    out.className = "note";
    out.textContent = what + "…";
    try {
      const r = await fn();
      out.textContent = typeof r === "string" ? r : what + ": done";
    } catch (e) {
      out.className = "note error-text";
      out.textContent = what + " failed: " + e.message;
    }
    tick();
  }

  // ---------------------------------------------------------------- workflows

  const WF_STATUSES = ["running", "succeeded", "degraded", "failed", "cancelled", "timed_out"];
  const WF_COLORS = {
    running: "var(--run)", succeeded: "var(--ok)", degraded: "var(--warn)", failed: "var(--bad)",
    cancelled: "var(--skip)", timed_out: "var(--bad)",
  };
  const AGES = [["", "any age"], ["900", "last 15 min"], ["3600", "last hour"], ["86400", "last day"], ["604800", "last week"]];

  function workflowsPage(query) {
    const f = { status: query.get("status") || "", name: query.get("name") || "", age: query.get("age") || "" };
    const status = h("select", { id: "f-status" }, h("option", { value: "" }, "any status"),
      WF_STATUSES.map((s) => h("option", { value: s }, s)));
    status.value = f.status;
    const name = h("input", { id: "f-name", type: "search", placeholder: "name contains", value: f.name });
    const age = h("select", { id: "f-age" }, AGES.map(([v, t]) => h("option", { value: v }, t)));
    age.value = f.age;
    const count = h("span", { class: "muted", id: "wf-count" });
    const body = h("tbody", { id: "wf-rows" });
    let last = null;
    const changed = () => {
      f.status = status.value;
      f.name = name.value;
      f.age = age.value;
      setQuery("#/workflows", f);
      last = null;
      tick();
    };
    status.addEventListener("change", changed);
    age.addEventListener("change", changed);
    name.addEventListener("input", changed);
    main.append(
      h("h1", {}, "Workflows"),
      h("div", { class: "filters" },
        h("label", {}, "Status", status), h("label", {}, "Name", name), h("label", {}, "Submitted", age), count),
      h("table", { id: "workflows" },
        h("thead", {}, h("tr", {}, ["Id", "Name", "Status", "Steps", "Submitted", "Took", "Reason"].map((t) => h("th", {}, t)))),
        body),
    );
    return async () => {
      const data = await api("/v1/workflows?limit=1000" + (f.status ? "&status=" + enc(f.status) : ""));
      const needle = f.name.toLowerCase();
      const since = f.age ? Date.now() - Number(f.age) * 1000 : 0;
      const rows = data.workflows.filter(
        (w) => (!needle || w.name.toLowerCase().includes(needle)) && w.submitted_ms >= since);
      const key = JSON.stringify(rows) + Math.floor(Date.now() / 10000);
      if (key === last) return;
      last = key;
      count.textContent = rows.length + " of " + data.workflows.length + " shown";
      body.replaceChildren(...rows.map(workflowRow));
      if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No workflows match.")));
    };
  }

  function workflowRow(w) {
    const pct = w.steps ? (100 * w.steps_finished) / w.steps : 0;
    return h("tr", { "data-id": w.id },
      h("td", { class: "nowrap" }, link(wfHash(w.id), w.id)),
      h("td", { class: "wf-name" }, link(wfHash(w.id), w.name)),
      h("td", {}, badge(w.status), w.paused ? [" ", badge("paused")] : null),
      h("td", {}, h("div", { class: "bar", title: w.steps_finished + "/" + w.steps + " steps finished" },
        h("span", { style: { width: pct + "%", background: WF_COLORS[w.status] || "var(--wait)" } })),
        h("span", { class: "note" }, w.steps_finished + "/" + w.steps)),
      h("td", { class: "nowrap", title: when(w.submitted_ms) }, ago(w.submitted_ms)),
      h("td", { class: "nowrap" }, w.finished_ms ? span(w.finished_ms - w.submitted_ms) : ""),
      h("td", { class: "err" }, w.reason || ""));
  }

  // ---------------------------------------------------------------- one workflow

  const BUCKETS = [
    ["succeeded", "var(--ok)"], ["running", "var(--run)"], ["queued", "#74c0fc"],
    ["waiting_retry", "var(--warn)"], ["waiting_upstream", "var(--wait)"], ["blocked", "#ffd43b"],
    ["dead_lettered", "var(--dead)"], ["discarded", "#ced4da"], ["skipped", "var(--skip)"],
    ["failed", "var(--bad)"], ["cancelled", "#868e96"],
  ];
  const STEP_COLORS = {
    pending: "#adb5bd", running: "#1c7ed6", succeeded: "#2f9e44", degraded: "#f08c00",
    failed: "#e03131", skipped: "#ced4da", cancelled: "#868e96",
  };

  function workflowPage(id, selStep, selItem) {
    const head = h("div", { id: "wf-head" });
    const out = h("span", { class: "note", id: "wf-action-out" });
    const buttons = h("span", { class: "actions" });
    const actions = h("div", { class: "actions" }, buttons, out);
    const dag = h("div", { class: "dag", id: "dag" });
    const funnel = h("tbody", { id: "funnel-rows" });
    const hist = h("tbody", { id: "history-rows" });
    const items = h("div", { id: "items" });
    main.append(
      h("p", {}, link("#/workflows", "← workflows")),
      head, actions,
      h("div", { class: "card" }, h("h2", {}, "Steps"), dag,
        h("div", { class: "legend" }, Object.entries(STEP_COLORS).map(([s, c]) =>
          h("span", {}, h("i", { style: { background: c } }), s)))),
      h("div", { class: "card" }, h("h2", {}, "Funnel: where every item is"),
        h("table", { id: "funnel" }, h("thead", {}, h("tr", {},
          h("th", {}, "Step"), h("th", {}, "Status"), h("th", {}, "Items"), h("th", {}, ""),
          BUCKETS.map(([b]) => h("th", { class: "num" }, b.replace("_", " "))))), funnel)),
      ...(selStep ? [items] : []),
      h("div", { class: "card" }, h("h2", {}, "History"),
        h("table", { id: "history" }, h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "What"))), hist)),
    );
    let last = null;
    let itemsShown = false;
    return async () => {
      const w = await api("/v1/workflows/" + enc(id));
      const key = JSON.stringify(w);
      if (key !== last) {
        last = key;
        renderHead(head, w);
        buttons.replaceChildren(...actionsFor(w).map((a) =>
          h("button", { id: "wf-" + a, class: a === "cancel" ? "danger" : "", onclick: () =>
            act(out, a, async () => (await post("/v1/workflows/" + enc(id) + "/" + a), a + ": done")) }, a)));
        dag.replaceChildren(drawDag(w, selStep));
        funnel.replaceChildren(...w.step_runs.map((s) => funnelRow(w, s, selStep)));
        const events = w.history.slice(-300).reverse();
        hist.replaceChildren(...events.map((e) =>
          h("tr", {}, h("td", { class: "mono", title: ago(e.at_ms) }, when(e.at_ms)), h("td", { class: "err" }, e.what))));
      }
      if (selStep && !itemsShown) {
        itemsShown = true;
        const s = w.step_runs.find((r) => r.id === selStep);
        if (!s) items.replaceChildren(h("p", { class: "muted" }, "No step " + selStep + " in " + id + "."));
        else if (selItem === null) showItems(items, w, s, 0);
        else showItem(items, w, s, selItem);
      }
    };
  }

  /** What can be done to a workflow in its state (the API refuses the rest with 409). */
  function actionsFor(w) {
    if (w.status === "running") return [w.paused ? "resume" : "pause", "cancel"];
    if (["failed", "cancelled", "timed_out"].includes(w.status)) return ["retry"];
    return [];
  }

  function renderHead(head, w) {
    const kv = [
      ["Id", w.id], ["Submitted", when(w.submitted_ms) + " (" + ago(w.submitted_ms) + ")"],
      ["Finished", w.finished_ms ? when(w.finished_ms) + " (took " + span(w.finished_ms - w.submitted_ms) + ")" : ""],
      ["Reason", w.reason], ["Owner", w.owner], ["Description", w.description],
      ["Params", Object.keys(w.params || {}).length ? brief(w.params) : ""], ["Idempotency key", w.idempotency_key],
    ].filter(([, v]) => v);
    head.replaceChildren(
      h("h1", {}, h("span", { id: "wf-title" }, w.name), " ", badge(w.status), w.paused ? [" ", badge("paused")] : null),
      h("dl", { class: "kv" }, kv.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    );
  }

  /** Steps by dependency depth, left to right; edges from each need. */
  function drawDag(w, selStep) {
    const steps = w.step_runs;
    const byId = new Map(steps.map((s) => [s.id, s]));
    const depth = new Map();
    const depthOf = (s, seen) => {
      if (depth.has(s.id)) return depth.get(s.id);
      if (seen.has(s.id)) return 0;
      seen.add(s.id);
      let d = 0;
      for (const n of s.needs || []) if (byId.has(n)) d = Math.max(d, depthOf(byId.get(n), seen) + 1);
      depth.set(s.id, d);
      return d;
    };
    const cols = [];
    for (const s of steps) {
      const d = depthOf(s, new Set());
      (cols[d] = cols[d] || []).push(s);
    }
    const W = 170, H = 52, GX = 60, GY = 18, PAD = 10;
    const pos = new Map();
    cols.forEach((col, c) => col.forEach((s, r) => pos.set(s.id, { x: PAD + c * (W + GX), y: PAD + r * (H + GY) })));
    const width = PAD * 2 + cols.length * W + Math.max(0, cols.length - 1) * GX;
    const height = PAD * 2 + Math.max(...cols.map((c) => c.length)) * (H + GY) - GY;
    const root = svg("svg", { width, height, viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": "steps of " + w.id });
    root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#adb5bd" }))));
    for (const s of steps) {
      const to = pos.get(s.id);
      for (const n of s.needs || []) {
        const from = pos.get(n);
        if (!from) continue;
        const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2, mx = (x1 + x2) / 2;
        root.append(svg("path", { class: "edge", "data-from": n, "data-to": s.id, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
      }
    }
    for (const s of steps) {
      const p = pos.get(s.id);
      const done = s.funnel ? s.funnel.succeeded : s.succeeded;
      const dead = s.funnel ? s.funnel.dead_lettered : s.dead_lettered;
      const g = svg("g", { class: "node" + (s.id === selStep ? " selected" : ""), "data-step": s.id, transform: `translate(${p.x},${p.y})`, tabindex: 0 });
      g.addEventListener("click", () => { location.hash = stepHash(w.id, s.id); });
      g.append(
        svg("title", {}, s.id + ": " + s.status + (s.error ? " — " + s.error : "")),
        svg("rect", { width: W, height: H, rx: 6, fill: STEP_COLORS[s.status] || "#868e96" }),
        svg("text", { x: 10, y: 20, "font-weight": 600, class: "step-name" }, s.id.length > 22 ? s.id.slice(0, 21) + "…" : s.id),
        svg("text", { x: 10, y: 39, class: "step-count" }, done + "/" + s.items + " ok" + (dead ? " · " + dead + " dead" : "") + (s.funnel && s.funnel.running ? " · " + s.funnel.running + " run" : "")),
      );
      root.append(g);
    }
    return root;
  }

  function funnelRow(w, s, selStep) {
    const f = s.funnel || {};
    const total = s.items || 1;
    return h("tr", { class: s.id === selStep ? "sel" : "", "data-step": s.id },
      h("td", {}, link(stepHash(w.id, s.id), s.id)),
      h("td", {}, badge(s.status)),
      h("td", { class: "num" }, s.items),
      h("td", {}, h("div", { class: "bar" }, BUCKETS.filter(([b]) => f[b]).map(([b, c]) =>
        h("span", { title: b + ": " + f[b], style: { width: (100 * f[b]) / total + "%", background: c } })))),
      BUCKETS.map(([b]) => h("td", { class: "num", "data-bucket": b }, f[b] ? f[b] : "")),
    );
  }

  /** A page of a step's items, each with its status at this step, attempts and error. */
  async function showItems(box, w, s, from) {
    const n = s.items;
    const to = Math.min(n, from + ITEMS_PAGE);
    const rows = h("tbody", { id: "item-rows" });
    const pager = h("div", { class: "actions" },
      h("button", { disabled: from === 0, onclick: () => showItems(box, w, s, Math.max(0, from - ITEMS_PAGE)) }, "← earlier"),
      h("span", { class: "note" }, n ? "items " + from + "–" + (to - 1) + " of " + n : "no items yet"),
      h("button", { disabled: to >= n, onclick: () => showItems(box, w, s, to) }, "later →"),
      h("button", { onclick: () => showItems(box, w, s, from) }, "reload"));
    box.replaceChildren(h("div", { class: "card" },
      h("h2", {}, "Items of step ", h("code", {}, s.id)),
      s.error ? h("p", { class: "err" }, s.error) : null,
      pager,
      h("table", { id: "items-table" }, h("thead", {}, h("tr", {},
        ["Item", "Value", "Status", "Attempt", "Placed", "Node", "Took", "Error", ""].map((t) => h("th", {}, t)))), rows)));
    for (let i = from; i < to; i++) {
      let it;
      try {
        it = await api("/v1/workflows/" + enc(w.id) + "/items/" + i);
      } catch (e) {
        if (e.status === 404) {
          // A step without `map`: one task, item 0.
          rows.append(h("tr", {}, h("td", {}, "—"), h("td", { colspan: 7, class: "muted" }, "a single task (no map)"),
            h("td", {}, link(itemHash(w.id, s.id, 0), "attempts and logs"))));
          return;
        }
        rows.append(h("tr", {}, h("td", { colspan: 9, class: "err" }, e.message)));
        return;
      }
      const st = it.steps.find((x) => x.step === s.id) || {};
      rows.append(h("tr", { "data-item": i },
        h("td", { class: "num" }, i), h("td", { class: "mono" }, brief(it.value)),
        h("td", {}, st.status ? badge(st.status) : ""), h("td", { class: "num" }, st.attempt || ""),
        h("td", { class: "num" }, st.placed || ""), h("td", { class: "mono" }, st.node || ""),
        h("td", {}, span(st.duration_ms)), h("td", { class: "err" }, st.error || ""),
        h("td", {}, link(itemHash(w.id, s.id, i), "attempts and logs"))));
    }
  }

  /** One item: its path through every step, and the logs of its attempts at this one. */
  async function showItem(box, w, s, item) {
    const card = h("div", { class: "card", id: "item" },
      h("p", {}, link(stepHash(w.id, s.id), "← items of " + s.id)),
      h("h2", {}, "Item " + item + " of ", h("code", {}, s.id)));
    box.replaceChildren(card);
    let it = null;
    try {
      it = await api("/v1/workflows/" + enc(w.id) + "/items/" + item);
    } catch (e) {
      if (e.status !== 404) card.append(h("p", { class: "err" }, e.message));
    }
    let attempts = s.status === "pending" ? 0 : 1;
    if (it) {
      card.append(h("p", {}, "Value: ", h("code", {}, brief(it.value))),
        h("table", { id: "item-steps" }, h("thead", {}, h("tr", {},
          ["Step", "Status", "Attempt", "Placed", "Node", "Started", "Took", "Error", "Output"].map((t) => h("th", {}, t)))),
        h("tbody", {}, it.steps.map((x) => h("tr", { class: x.step === s.id ? "sel" : "" },
          h("td", {}, link(itemHash(w.id, x.step, item), x.step)), h("td", {}, badge(x.status)),
          h("td", { class: "num" }, x.attempt), h("td", { class: "num" }, x.placed), h("td", { class: "mono" }, x.node || ""),
          h("td", {}, when(x.started_ms)), h("td", {}, span(x.duration_ms)),
          h("td", { class: "err" }, [x.error, x.discarded ? "discarded: " + x.discarded : null].filter(Boolean).join(" · ")),
          h("td", { class: "mono" }, brief(x.output)))))));
      const here = it.steps.find((x) => x.step === s.id);
      attempts = here ? here.attempt : 0;
    }
    if (!attempts) {
      card.append(h("p", { class: "muted" }, "No attempt of this item at " + s.id + " yet."));
      return;
    }
    const pick = h("select", { id: "attempt" });
    for (let a = attempts; a >= 1; a--) pick.append(h("option", { value: a }, "attempt " + a));
    const out = h("pre", { class: "log", id: "log-stdout" });
    const err = h("pre", { class: "log", id: "log-stderr" });
    const meta = h("span", { class: "note", id: "log-meta" });
    const load = async () => {
      const base = "/v1/workflows/" + enc(w.id) + "/logs?step=" + enc(s.id) + (it ? "&item=" + item : "") + "&attempt=" + pick.value;
      for (const [stream, el] of [["stdout", out], ["stderr", err]]) {
        try {
          const r = await api(base + "&stream=" + stream, { text: true });
          el.textContent = r.text || "(empty)";
          meta.textContent = "from " + (r.headers.get("x-troupe-log-node") || "?") +
            (r.headers.get("x-troupe-attempt-running") === "true" ? " · still running" : "");
        } catch (e) {
          el.textContent = "(" + e.message + ")";
        }
      }
    };
    pick.addEventListener("change", load);
    card.append(h("h2", {}, "Logs"), h("div", { class: "actions" }, pick, h("button", { onclick: load }, "reload"), meta),
      h("h3", {}, "stdout"), out, h("h3", {}, "stderr"), err);
    await load();
  }

  // ---------------------------------------------------------------- dead letters

  function dlqPage(query) {
    const f = { workflow: query.get("workflow") || "", step: query.get("step") || "", grep: query.get("grep") || "" };
    const inputs = {
      workflow: h("input", { id: "d-workflow", placeholder: "wf-12", value: f.workflow, size: 10 }),
      step: h("input", { id: "d-step", placeholder: "step id", value: f.step, size: 12 }),
      grep: h("input", { id: "d-grep", placeholder: "error text", value: f.grep, size: 24 }),
    };
    const selected = new Set();
    const out = h("span", { class: "note", id: "dlq-out" });
    const reason = h("input", { id: "d-reason", placeholder: "reason (to discard)", size: 24 });
    const rows = h("tbody", { id: "dlq-rows" });
    const total = h("span", { class: "muted", id: "dlq-total" });
    const all = h("input", { type: "checkbox", id: "d-all", title: "select all shown" });
    let shown = [];
    let last = null;
    const apply = (e) => {
      if (e) e.preventDefault();
      for (const k of Object.keys(f)) f[k] = inputs[k].value.trim();
      setQuery("#/dlq", f);
      selected.clear();
      last = null;
      tick();
    };
    const filterBody = () => {
      const b = {};
      for (const [k, v] of Object.entries(f)) if (v) b[k] = v;
      if (!Object.keys(b).length) b.all = true;
      return b;
    };
    const bulk = (verb, body) => act(out, verb, async () => {
      if (verb === "discard") {
        if (!reason.value.trim()) throw new Error("give a reason to discard");
        body.reason = reason.value.trim();
      }
      const r = await post("/v1/dlq/" + verb, body);
      selected.clear();
      last = null;
      const n = verb === "redrive" ? r.redriven : r.discarded;
      return verb + ": " + n + " done, " + r.refused + " refused" + (r.notes && r.notes.length ? " (" + r.notes.join("; ") + ")" : "");
    });
    all.addEventListener("change", () => {
      for (const d of shown) if (all.checked) selected.add(d.id); else selected.delete(d.id);
      last = null;
      tick();
    });
    main.append(
      h("h1", {}, "Dead letters"),
      h("form", { class: "filters", id: "dlq-filter", onsubmit: apply },
        h("label", {}, "Workflow", inputs.workflow), h("label", {}, "Step", inputs.step), h("label", {}, "Error contains", inputs.grep),
        h("button", { type: "submit", id: "d-apply" }, "filter"), total),
      h("div", { class: "actions" },
        h("button", { id: "redrive-selected", class: "primary", onclick: () => bulk("redrive", { ids: [...selected] }) }, "redrive selected"),
        h("button", { id: "discard-selected", class: "danger", onclick: () => bulk("discard", { ids: [...selected] }) }, "discard selected"),
        h("button", { id: "redrive-matching", onclick: () => bulk("redrive", filterBody()) }, "redrive all matching"),
        h("button", { id: "discard-matching", class: "danger", onclick: () => bulk("discard", filterBody()) }, "discard all matching"),
        reason, out),
      h("table", { id: "dlq" }, h("thead", {}, h("tr", {}, h("th", {}, all),
        ["Id", "Workflow", "Step", "Item", "Value", "Attempts", "Node", "Last error", "When", ""].map((t) => h("th", {}, t)))), rows),
    );
    return async () => {
      const q = new URLSearchParams({ limit: "500" });
      for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
      const data = await api("/v1/dlq?" + q);
      const key = JSON.stringify(data) + [...selected].join(",");
      if (key === last) return;
      last = key;
      shown = data.dead_letters;
      for (const id of [...selected]) if (!shown.some((d) => d.id === id)) selected.delete(id);
      total.textContent = data.total + " dead letter(s)" + (data.total > shown.length ? ", first " + shown.length + " shown" : "");
      all.checked = shown.length > 0 && shown.every((d) => selected.has(d.id));
      rows.replaceChildren(...shown.map((d) => {
        const box = h("input", { type: "checkbox", class: "pick", "data-id": d.id });
        box.checked = selected.has(d.id);
        box.addEventListener("change", () => { if (box.checked) selected.add(d.id); else selected.delete(d.id); });
        return h("tr", { "data-id": d.id, "data-workflow": d.workflow },
          h("td", {}, box), h("td", { class: "num" }, "#" + d.id),
          h("td", {}, link(wfHash(d.workflow), d.workflow)), h("td", {}, link(stepHash(d.workflow, d.step), d.step)),
          h("td", { class: "num" }, link(itemHash(d.workflow, d.step, d.item), d.item)),
          h("td", { class: "mono" }, brief(d.item_value)), h("td", { class: "num" }, d.attempt + "/" + d.attempts),
          h("td", { class: "mono" }, d.node || ""), h("td", { class: "err" }, d.last_error),
          h("td", { title: when(d.at_ms) }, ago(d.at_ms)),
          h("td", {}, h("button", { class: "redrive-one", onclick: () => act(out, "redrive #" + d.id, async () => {
            await post("/v1/dlq/" + d.id + "/redrive");
            last = null;
            return "redrove #" + d.id;
          }) }, "redrive")));
      }));
      if (!shown.length) rows.append(h("tr", {}, h("td", { colspan: 11, class: "muted" }, "No dead letters match.")));
    };
  }

  // ---------------------------------------------------------------- nodes

  function meter(r, fmt) {
    const cap = r.capacity || 0;
    const pct = (x) => (cap ? Math.min(100, (100 * x) / cap) : 0) + "%";
    return h("div", {},
      h("div", { class: "meter", title: "allocated " + fmt(r.allocated) + ", reserved " + fmt(r.reserved) + ", capacity " + fmt(cap) },
        h("div", { class: "res", style: { width: pct(r.reserved) } }), h("div", { class: "use", style: { width: pct(r.allocated) } })),
      h("span", { class: "meter-label" }, fmt(r.allocated) + " / " + fmt(cap) + (r.reserved ? " (" + fmt(r.reserved) + " reserved)" : "")));
  }

  /** Warm worker groups (`{step, workers, tasks, gpus}`) or broken ones (`"wf-N/step: why"`). */
  function workerList(list, cls) {
    if (!Array.isArray(list) || !list.length) return "";
    const text = (x) => x && typeof x === "object" && "step" in x
      ? x.step + ": " + x.workers + " worker(s), " + x.tasks + " task(s)" +
        (Array.isArray(x.gpus) && x.gpus.length ? " on " + x.gpus.join(", ") : "")
      : brief(x);
    return h("ul", { class: cls }, list.map((x) => h("li", { class: "mono" }, text(x))));
  }

  function nodesPage() {
    const out = h("span", { class: "note", id: "nodes-out" });
    const rows = h("tbody", { id: "node-rows" });
    let last = null;
    main.append(h("h1", {}, "Nodes"), h("div", { class: "actions" }, out),
      h("table", { id: "nodes" }, h("thead", {}, h("tr", {},
        ["Node", "Status", "Epoch", "Attempts", "Slots", "CPU (cores)", "Memory", "GPUs", "Warm workers", "Labels", ""].map((t) => h("th", {}, t)))), rows));
    return async () => {
      const data = await api("/v1/nodes");
      const key = JSON.stringify(data);
      if (key === last) return;
      last = key;
      rows.replaceChildren(...data.nodes.map((n) => {
        const draining = n.status === "draining";
        const gpus = (n.gpus || []).map((g) => h("span", { class: "gpu" + (g.in_use ? " in-use" : ""), title: g.uuid },
          "GPU " + g.index + " " + (g.model || "") + " " + bytes(g.memory_bytes) + (g.in_use ? " · in use" : " · free")));
        return h("tr", { "data-node": n.id },
          h("td", { class: "mono nowrap" }, n.id), h("td", {}, badge(n.status)), h("td", { class: "num" }, n.epoch),
          h("td", { class: "num" }, Array.isArray(n.attempts) ? n.attempts.length : n.attempts),
          h("td", { class: "num nowrap" }, n.slots + (n.queue ? " (+" + n.queue + " queue)" : "")),
          h("td", {}, meter(n.cpu_milli, cores)), h("td", {}, meter(n.memory_bytes, bytes)),
          h("td", {}, gpus.length ? gpus : h("span", { class: "muted" }, "none")),
          h("td", {}, workerList(n.workers, "workers"),
            Array.isArray(n.broken_workers) && n.broken_workers.length ? [h("div", { class: "note" }, "broken:"), workerList(n.broken_workers, "broken-workers")] : null),
          h("td", { class: "mono" }, Object.entries(n.labels || {}).map(([k, v]) => k + "=" + v).join(" ")),
          h("td", {}, n.status === "down" ? "" : h("button", { class: draining ? "" : "danger", "data-action": draining ? "undrain" : "drain",
            onclick: () => act(out, (draining ? "undrain " : "drain ") + n.id, async () => {
              await post("/v1/nodes/" + enc(n.id) + "/drain", { draining: !draining });
              last = null;
              return (draining ? "returned " : "draining ") + n.id;
            }) }, draining ? "undrain" : "drain")));
      }));
    };
  }

  // ---------------------------------------------------------------- raft

  function raftPage() {
    const box = h("div", { id: "raft" });
    main.append(h("h1", {}, "Raft group"), box);
    let last = null;
    return async () => {
      const [hl, sv] = await Promise.all([api("/v1/health"), api("/v1/servers")]);
      const key = JSON.stringify([hl, sv]);
      if (key === last) return;
      last = key;
      const leader = sv.leader_id;
      const kv = hl.role === "server" ? [
        ["This node", hl.node + " (raft id " + hl.raft_id + ", " + (hl.leader ? "leader" : "follower") + ")"],
        ["Leader", leader ? "raft id " + leader : "unknown"], ["Term", hl.term],
        ["Commit index", hl.commit], ["Applied index", hl.applied], ["Not yet applied", hl.commit - hl.applied],
        ["Snapshot index", hl.snapshot_index], ["Workflows", hl.workflows], ["Up for", span(hl.uptime_ms)],
        ["Replica audit", hl.audit ? "seq " + hl.audit.seq + (hl.audit.matched ? ", matched the leader" : ", DIFFERS") : "not yet"],
      ] : [["This node", hl.node + " (a worker: it holds no raft log)"], ["Leader", leader ? "raft id " + leader : "unknown"], ["Term", sv.term]];
      const stats = hl.stats ? Object.entries(hl.stats) : [];
      fill(box,
        h("div", { class: "card" }, h("dl", { class: "kv", id: "raft-status" }, kv.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-k": k }, v)]))),
        h("div", { class: "card" }, h("h2", {}, "Servers"),
          h("table", { id: "servers" }, h("thead", {}, h("tr", {}, h("th", {}, "Raft id"), h("th", {}, "Role"))),
            h("tbody", {},
              sv.voters.map((v) => h("tr", { "data-raft-id": v }, h("td", { class: "num" }, v),
                h("td", {}, v === leader ? badge("succeeded", "leader") : "voter", v === hl.raft_id ? " (this node)" : ""))),
              sv.learners.map((v) => h("tr", { "data-raft-id": v }, h("td", { class: "num" }, v), h("td", {}, "learner")))))),
        stats.length ? h("div", { class: "card" }, h("h2", {}, "Applied on this node"),
          h("dl", { class: "kv" }, stats.map(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, v)]))) : null,
      );
    };
  }

  // ---------------------------------------------------------------- start

  window.addEventListener("hashchange", render);
  document.addEventListener("visibilitychange", tick);
  setInterval(tick, POLL_MS);
  whoami();
  render();
})();
