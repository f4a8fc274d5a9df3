// The collector's page: search and dashboard over the read API, with the caller's own bearer
// token (kept for this tab only). Everything an event holds is put on the page as text, never as
// markup: audit logs carry whatever users sent.

const TOKEN_KEY = "clusteraudit-token";
const RANGES = [
  ["15m", "Last 15 minutes"], ["1h", "Last hour"], ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"],
];

// The dashboard: each card is a query; its chart opens that query in the search.
const CARDS = [
  { id: "operations", title: "Operations over time", q: "", by: "verb" },
  { id: "users", title: "Top users", q: "", by: "user", list: "user" },
  { id: "resources", title: "Top resources", q: "", by: "resource", list: "resource" },
  { id: "failed", title: "Failed and denied requests", q: "code>=400", by: "code", list: "code" },
  { id: "secrets", title: "Secrets access", q: "resource:secrets", by: "user", list: "user" },
  { id: "exec", title: "Exec and attach", q: "subresource:exec or subresource:attach", by: "user", list: "user" },
  {
    id: "rbac", title: "RBAC changes", by: "user", list: "user",
    q: "apiGroup:\"rbac.authorization.k8s.io\" and (verb:create or verb:update or verb:patch or verb:delete or verb:deletecollection)",
  },
  { id: "deletions", title: "Deletions", q: "verb:delete or verb:deletecollection", by: "resource", list: "resource" },
];

const $ = (id) => document.getElementById(id);
const state = { topic: null, cursors: [], cursor: null };

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    throw new HttpError(response.status, (body && body.error) || response.statusText);
  }
  return body;
}

function status(text) { $("status").textContent = text; }

function showOnly(id) {
  for (const view of ["sign-in", "search-view", "dashboard-view"]) $(view).hidden = view !== id;
  $("sign-out").hidden = id === "sign-in";
}

function signIn(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showOnly("sign-in");
  $("sign-in-error").textContent = message || "";
  status("");
  $("token").focus();
}

// A refused call says why: a bad token sends you to sign in, a missing grant says which.
function failed(error, where) {
  if (error instanceof HttpError && error.status === 401) {
    signIn("The collector did not accept this token.");
  } else if (error instanceof HttpError && error.status === 403) {
    $(where).textContent = `Not allowed: ${error.message}. Reading needs get on auditevents.clusteraudit.io.`;
    status("");
  } else {
    $(where).textContent = error.message;
    status("");
  }
}

function params() { return new URLSearchParams(location.search); }

function fillRanges(select, value) {
  select.replaceChildren(...RANGES.map(([v, label]) => new Option(label, v, false, v === value)));
}

async function topic() {
  if (state.topic) return state.topic;
  const wanted = params().get("topic");
  const id = wanted || (await api("/v1/route")).topicId;
  const described = await api(`/v1/topics/${encodeURIComponent(id)}`);
  state.topic = id;
  $("topic-name").textContent = `topic ${described.name || id}`;
  return id;
}

function withTopic(url) {
  const wanted = params().get("topic");
  if (wanted) url.searchParams.set("topic", wanted);
  return url;
}

function searchUrl(q, since) {
  const url = new URL("/ui/search", location.origin);
  if (q) url.searchParams.set("q", q);
  url.searchParams.set("since", since || "24h");
  return withTopic(url);
}

// ---- search ----

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function describe(event) {
  const ref = event.objectRef || {};
  const resource = ref.resource ? (ref.subresource ? `${ref.resource}/${ref.subresource}` : ref.resource)
    : (event.requestURI || "");
  const where = [ref.namespace, ref.name].filter(Boolean).join("/");
  const code = event.responseStatus && event.responseStatus.code;
  const stamp = event.stageTimestamp || event.requestReceivedTimestamp || "";
  return {
    time: stamp.replace("T", " ").replace(/\.\d+Z$/, "Z"),
    user: (event.user && event.user.username) || "",
    verb: event.verb || "",
    resource, where,
    code: code === undefined ? "" : String(code),
    bad: code >= 400,
    ip: (event.sourceIPs || [])[0] || "",
  };
}

function showDetail(event) {
  $("detail-json").textContent = JSON.stringify(event, null, 2);
  $("detail").hidden = false;
  $("detail-json").focus();
}

async function runSearch(cursor) {
  const q = $("q").value.trim();
  const since = $("since").value;
  $("search-error").textContent = "";
  status("Searching…");
  try {
    const id = await topic();
    const url = new URL(`/v1/topics/${encodeURIComponent(id)}/events`, location.origin);
    url.searchParams.set("q", q);
    url.searchParams.set("from", since);
    url.searchParams.set("limit", "50");
    if (cursor) url.searchParams.set("cursor", cursor);
    const page = await api(url.pathname + url.search);
    const rows = page.events.map((event) => {
      const d = describe(event);
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.append(cell(d.time), cell(d.user), cell(d.verb), cell(d.resource), cell(d.where),
        cell(d.code, d.bad ? "code-bad" : ""), cell(d.ip));
      tr.addEventListener("click", () => showDetail(event));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") showDetail(event); });
      return tr;
    });
    $("results").tBodies[0].replaceChildren(...rows);
    state.cursor = page.cursor || null;
    $("next-page").disabled = !page.cursor;
    $("first-page").disabled = !cursor;
    status(rows.length ? `${rows.length} events${page.cursor ? " (more below)" : ""}` : "No events match.");
  } catch (error) {
    failed(error, "search-error");
  }
}

function showSearch() {
  showOnly("search-view");
  const p = params();
  $("q").value = p.get("q") || "";
  fillRanges($("since"), p.get("since") || "24h");
  $("detail").hidden = true;
  runSearch(null);
}

// ---- dashboard ----

const SVG = "http://www.w3.org/2000/svg";
const RANGE_MICROS = { "15m": 9e8, "1h": 3.6e9, "6h": 2.16e10, "24h": 8.64e10, "7d": 6.048e11, "30d": 2.592e12 };

// The store returns only the intervals that hold events; the chart shows the whole range.
function densify(stats, since) {
  const step = stats.intervalMicros;
  const to = Date.now() * 1000;
  const from = to - (RANGE_MICROS[since] || RANGE_MICROS["24h"]);
  const counts = new Map(stats.overTime.map((b) => [b.start, b.count]));
  const first = Math.floor(from / step) * step;
  const buckets = [];
  for (let start = first; start <= to && buckets.length < 500; start += step) {
    buckets.push({ start, count: counts.get(start) || 0 });
  }
  // Buckets the grid above does not line up with (a clock ahead, say) still count.
  for (const b of stats.overTime) if (!buckets.some((x) => x.start === b.start)) buckets.push(b);
  return buckets.sort((a, b) => a.start - b.start);
}

function barChart(buckets, onClick) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 300 90");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "link");
  svg.setAttribute("tabindex", "0");
  svg.addEventListener("click", onClick);
  svg.addEventListener("keydown", (e) => { if (e.key === "Enter") onClick(); });
  const max = Math.max(1, ...buckets.map((b) => b.count));
  const width = 300 / Math.max(1, buckets.length);
  buckets.forEach((bucket, i) => {
    const rect = document.createElementNS(SVG, "rect");
    const height = (bucket.count / max) * 86;
    rect.setAttribute("x", String(i * width + 0.5));
    rect.setAttribute("y", String(90 - height));
    rect.setAttribute("width", String(Math.max(1, width - 1)));
    rect.setAttribute("height", String(height));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${new Date(bucket.start / 1000).toISOString()}: ${bucket.count}`;
    rect.append(title);
    svg.append(rect);
  });
  return svg;
}

function quoted(value) {
  return /^[A-Za-z0-9_.:\-*]+$/.test(value) ? value : `"${value.replaceAll("\\", "\\\\").replaceAll("\"", "\\\"")}"`;
}

function topList(card, top, since) {
  const ul = document.createElement("ul");
  ul.className = "toplist";
  const max = Math.max(1, ...top.map((t) => t.count));
  for (const item of top.slice(0, 5)) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const label = document.createElement("span");
    label.textContent = item.value || "(none)";
    const count = document.createElement("span");
    count.textContent = String(item.count);
    const meter = document.createElement("span");
    meter.className = "meter";
    meter.style.width = `${(item.count / max) * 100}%`;
    button.append(label, count, meter);
    const term = card.list === "code" ? `code:${item.value}` : `${card.list}:${quoted(item.value)}`;
    const q = card.q ? `(${card.q}) and ${term}` : term;
    button.addEventListener("click", () => navigate(searchUrl(q, since)));
    li.append(button);
    ul.append(li);
  }
  return ul;
}

async function renderCard(card, id, since) {
  const section = document.createElement("section");
  section.className = "card";
  section.dataset.card = card.id;
  const h2 = document.createElement("h2");
  h2.textContent = card.title;
  const total = document.createElement("div");
  total.className = "total";
  total.textContent = "…";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.textContent = "Open in search";
  const go = () => navigate(searchUrl(card.q, since));
  open.addEventListener("click", go);
  section.append(h2, total, open);
  $("cards").append(section);
  const url = new URL(`/v1/topics/${encodeURIComponent(id)}/stats`, location.origin);
  url.searchParams.set("q", card.q);
  url.searchParams.set("from", since);
  url.searchParams.set("by", card.by);
  const stats = await api(url.pathname + url.search);
  total.textContent = String(stats.total);
  const chart = barChart(densify(stats, since), go);
  chart.setAttribute("aria-label", `${card.title}: ${stats.total} events over time`);
  section.append(chart);
  if (card.list) section.append(topList(card, stats.top, since));
}

async function showDashboard() {
  showOnly("dashboard-view");
  const since = params().get("since") || "24h";
  fillRanges($("dashboard-since"), since);
  $("cards").replaceChildren();
  delete $("cards").dataset.loaded;
  $("dashboard-error").textContent = "";
  status("Loading…");
  try {
    const id = await topic();
    await Promise.all(CARDS.map((card) => renderCard(card, id, since)));
    $("cards").dataset.loaded = "true";
    status("");
  } catch (error) {
    failed(error, "dashboard-error");
  }
}

// ---- navigation ----

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

function route() {
  const onDashboard = location.pathname.startsWith("/ui/dashboard");
  $("nav-search").toggleAttribute("aria-current", !onDashboard);
  $("nav-dashboard").toggleAttribute("aria-current", onDashboard);
  if (!token()) return signIn();
  if (onDashboard) showDashboard(); else showSearch();
}

window.addEventListener("popstate", route);
document.addEventListener("DOMContentLoaded", () => {
  for (const [id, view] of [["nav-search", "/ui/search"], ["nav-dashboard", "/ui/dashboard"]]) {
    $(id).addEventListener("click", (e) => {
      e.preventDefault();
      const url = withTopic(new URL(view, location.origin));
      url.searchParams.set("since", params().get("since") || "24h");
      navigate(url);
    });
  }
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    state.topic = null;
    route();
  });
  $("sign-out").addEventListener("click", () => signIn());
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.cursors = [];
    navigate(searchUrl($("q").value.trim(), $("since").value));
  });
  $("next-page").addEventListener("click", () => {
    if (!state.cursor) return;
    state.cursors.push(state.cursor);
    runSearch(state.cursor);
  });
  $("first-page").addEventListener("click", () => { state.cursors = []; runSearch(null); });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  $("dashboard-since").addEventListener("change", () => {
    const url = withTopic(new URL("/ui/dashboard", location.origin));
    url.searchParams.set("since", $("dashboard-since").value);
    navigate(url);
  });
  route();
});
