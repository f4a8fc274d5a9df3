// The collector's page: search, dashboard and alerts over the read API, with the caller's own
// bearer token (kept for this tab only). Everything an event holds is put on the page as text,
// never as markup: audit logs carry whatever users sent.

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
const state = { routeTopic: null, topics: null, cursors: [], cursor: null, alertsTimer: null };
const VIEWS = ["sign-in", "search-view", "dashboard-view", "alerts-view"];
// While the Alerts view is open it is read again this often, so firing and resolving show up.
const ALERTS_REFRESH_MS = 15_000;

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
  for (const view of VIEWS) $(view).hidden = view !== id;
  $("sign-out").hidden = id === "sign-in";
  // Alerts span every topic; the picker chooses what search and dashboard read.
  $("topic-picker").hidden = id !== "search-view" && id !== "dashboard-view";
}

function signIn(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.routeTopic = null;
  state.topics = null;
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

// ---- time ----

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const two = (n) => String(n).padStart(2, "0");
// Times are UTC throughout, as the events' own timestamps are.
function clock(ms) { const d = new Date(ms); return `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}`; }
function day(ms) { const d = new Date(ms); return `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`; }
function stamp(ms) {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${two(d.getUTCMonth() + 1)}-${two(d.getUTCDate())} ${clock(ms)}:${two(d.getUTCSeconds())}Z`;
}

function ago(ms) {
  const seconds = Math.round((Date.now() - ms) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function duration(seconds) {
  const parts = [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]];
  let rest = Math.max(0, Math.round(seconds));
  let text = "";
  for (const [size, unit] of parts) {
    if (rest >= size) { text += `${Math.floor(rest / size)}${unit}`; rest %= size; }
  }
  return text || "0s";
}

// A range in the URL: a preset (`since=24h`) or the times an alert or a chart's bar gave
// (`from=<RFC 3339>`, optional `to`).
function urlRange() {
  const p = params();
  if (p.get("from")) return { from: p.get("from"), to: p.get("to") || null };
  return RANGES.some(([v]) => v === p.get("since")) ? p.get("since") : "24h";
}

function rangeLabel(range) {
  const at = (text) => { const ms = Date.parse(text); return Number.isNaN(ms) ? text : stamp(ms); };
  return `${at(range.from)} – ${range.to ? at(range.to) : "now"}`;
}

function fillRanges(select, range) {
  const options = RANGES.map(([v, label]) => new Option(label, v, false, v === range));
  if (typeof range === "object") options.push(new Option(rangeLabel(range), "custom", false, true));
  select.replaceChildren(...options);
}

function chosenRange(select) { return select.value === "custom" ? urlRange() : select.value; }

// ---- topics ----

async function routeTopic() {
  if (!state.routeTopic) state.routeTopic = (await api("/v1/route")).topicId;
  return state.routeTopic;
}

async function allTopics() {
  if (state.topics) return state.topics;
  const logsets = (await api("/v1/logsets")).items || [];
  const lists = await Promise.all(logsets.map(async (logset) => {
    const topics = (await api(`/v1/logsets/${encodeURIComponent(logset.id)}/topics`)).items || [];
    return topics.map((t) => ({ id: t.id, name: t.name, logset: logset.name }));
  }));
  state.topics = lists.flat();
  return state.topics;
}

function topicLabel(t, routed) {
  return `${t.logset}/${t.name}${t.id === routed ? " (webhook)" : ""}`;
}

// The topic the URL names, else the one the webhook routes to; the picker shows which.
async function topic() {
  const [topics, routed] = await Promise.all([allTopics(), routeTopic()]);
  const id = params().get("topic") || routed;
  if (!id) throw new Error("No topic yet: the webhook routes to none, and the URL names none.");
  const options = topics.map((t) => new Option(topicLabel(t, routed), t.id, false, t.id === id));
  if (!topics.some((t) => t.id === id)) options.push(new Option(`${id} (not found)`, id, false, true));
  $("topic").replaceChildren(...options);
  return id;
}

function withTopic(url, id) {
  const wanted = id || params().get("topic");
  if (wanted) url.searchParams.set("topic", wanted);
  return url;
}

// The search page for `q` over `range` (a preset or {from, to}), in `topicId` or the current topic.
function searchUrl(q, range, topicId) {
  const url = new URL("/ui/search", location.origin);
  if (q) url.searchParams.set("q", q);
  if (typeof range === "object" && range) {
    url.searchParams.set("from", range.from);
    if (range.to) url.searchParams.set("to", range.to);
  } else {
    url.searchParams.set("since", range || "24h");
  }
  return withTopic(url, topicId);
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
  const range = chosenRange($("since"));
  $("search-error").textContent = "";
  status("Searching…");
  try {
    const id = await topic();
    const url = new URL(`/v1/topics/${encodeURIComponent(id)}/events`, location.origin);
    url.searchParams.set("q", q);
    if (typeof range === "object") {
      url.searchParams.set("from", range.from);
      if (range.to) url.searchParams.set("to", range.to);
    } else {
      url.searchParams.set("from", range);
    }
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
  fillRanges($("since"), urlRange());
  $("detail").hidden = true;
  runSearch(null);
}

// ---- dashboard ----

const SVG = "http://www.w3.org/2000/svg";
const RANGE_SECONDS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };
// Bars of a whole, readable length: 30 to 72 of them over each range.
const BUCKET_SECONDS = { "15m": 30, "1h": 60, "6h": 300, "24h": 1800, "7d": 10800, "30d": 43200 };
const TICK_SECONDS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
  172800, 604800];

// The store returns only the intervals that hold events; the chart shows the whole range.
function densify(stats, since) {
  const step = stats.intervalMicros;
  const to = Date.now() * 1000;
  const from = to - (RANGE_SECONDS[since] || RANGE_SECONDS["24h"]) * 1e6;
  const counts = new Map(stats.overTime.map((b) => [b.start, b.count]));
  const first = Math.floor(from / step) * step;
  const buckets = [];
  for (let start = first; start <= to && buckets.length < 500; start += step) {
    buckets.push({ start, count: counts.get(start) || 0 });
  }
  // Buckets the grid above does not line up with (a clock ahead, say) still count.
  for (const b of stats.overTime) if (!buckets.some((x) => x.start === b.start)) buckets.push(b);
  return { from, to, step, buckets: buckets.sort((a, b) => a.start - b.start) };
}

function count(n) {
  if (n < 1000) return String(n);
  if (n < 1e6) return `${+(n / 1e3).toFixed(n < 1e4 ? 1 : 0)}k`;
  return `${+(n / 1e6).toFixed(n < 1e7 ? 1 : 0)}M`;
}

// 1, 2 or 5 times a power of ten, at least `raw` and at least 1: counts are whole.
function niceStep(raw) {
  if (raw <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
}

function bucketLabel(startMs, endMs) {
  // Buckets under a minute need their seconds.
  const time = endMs - startMs < 60000
    ? (ms) => `${clock(ms)}:${two(new Date(ms).getUTCSeconds())}` : clock;
  const end = day(startMs) === day(endMs) ? time(endMs) : `${day(endMs)} ${time(endMs)}`;
  return `${day(startMs)} ${time(startMs)}–${end} UTC`;
}

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

// Bars over time with a time axis (UTC), a count axis, and each bar's interval and count on
// hover. A bar with events opens the search over its own interval; elsewhere, `onOpen`.
function timeChart(series, width, tooltip, onOpen, onBucket) {
  const height = 150;
  const { from, to: now, step, buckets } = series;
  const to = Math.max(now, ...buckets.map((b) => b.start + step));
  const max = Math.max(0, ...buckets.map((b) => b.count));
  const yStep = niceStep(max / 4);
  const yTop = Math.max(yStep, Math.ceil(max / yStep) * yStep);
  const left = 10 + 7 * count(yTop).length;
  const [right, top, bottom] = [10, 8, 20];
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const x = (micros) => left + ((micros - from) / (to - from)) * plotWidth;
  const y = (n) => top + plotHeight - (n / yTop) * plotHeight;

  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "link", tabindex: 0 });
  chart.addEventListener("click", (e) => { if (!e.target.closest(".bucket")) onOpen(); });
  chart.addEventListener("keydown", (e) => { if (e.key === "Enter") onOpen(); });
  const yAxis = svg("g", { class: "axis y" });
  for (let n = 0; n <= yTop; n += yStep) {
    yAxis.append(
      svg("line", { class: "grid", x1: left, x2: width - right, y1: y(n), y2: y(n) }),
      svg("text", { x: left - 5, y: y(n) + 4, "text-anchor": "end" }, count(n)),
    );
  }
  const tickSeconds = TICK_SECONDS.find((s) => (to - from) / 1e6 / s <= plotWidth / 80)
    || TICK_SECONDS[TICK_SECONDS.length - 1];
  const tick = tickSeconds * 1e6;
  const xAxis = svg("g", { class: "axis x" });
  xAxis.append(svg("line", { class: "baseline", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
  for (let t = Math.ceil(from / tick) * tick; t <= to; t += tick) {
    const at = x(t);
    if (at < left + 15 || at > width - 15) continue;
    const ms = t / 1000;
    const label = tickSeconds >= 86400 || ms % 86400000 === 0 ? day(ms) : clock(ms);
    xAxis.append(
      svg("line", { x1: at, x2: at, y1: y(0), y2: y(0) + 4 }),
      svg("text", { x: at, y: height - 4, "text-anchor": "middle" }, label),
    );
  }
  chart.append(yAxis, xAxis);
  for (const bucket of buckets) {
    const start = Math.max(from, bucket.start);
    const end = Math.min(to, bucket.start + step);
    if (end <= start) continue;
    const x0 = x(start);
    const barWidth = x(end) - x0;
    const gap = barWidth > 4 ? 1 : 0;
    const label = `${bucketLabel(bucket.start / 1000, (bucket.start + step) / 1000)}: ${bucket.count} ${bucket.count === 1 ? "event" : "events"}`;
    const group = svg("g", { class: "bucket", "data-count": bucket.count, "data-start": new Date(bucket.start / 1000).toISOString() });
    const hit = svg("rect", { class: "hit", x: x0, y: top, width: barWidth, height: plotHeight });
    const bar = svg("rect", {
      class: "bar", x: x0 + gap / 2, y: y(bucket.count), width: Math.max(0.5, barWidth - gap),
      height: y(0) - y(bucket.count),
    });
    group.append(svg("title", {}, label), hit, bar);
    group.addEventListener("mouseenter", () => {
      tooltip.textContent = label;
      tooltip.hidden = false;
      // Above the bar, within the card.
      const card = tooltip.offsetParent;
      if (!card) return;
      const box = chart.getBoundingClientRect();
      const cardBox = card.getBoundingClientRect();
      const center = box.left - cardBox.left - card.clientLeft + (x0 + barWidth / 2) * (box.width / width);
      const left = Math.min(Math.max(0, center - tooltip.offsetWidth / 2), card.clientWidth - tooltip.offsetWidth);
      tooltip.style.left = `${left}px`;
      tooltip.style.top = `${box.top - cardBox.top - card.clientTop - tooltip.offsetHeight - 2}px`;
    });
    group.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    group.addEventListener("click", () => {
      if (bucket.count > 0) onBucket(bucket.start, bucket.start + step); else onOpen();
    });
    chart.append(group);
  }
  return chart;
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
  url.searchParams.set("interval", `${BUCKET_SECONDS[since] || BUCKET_SECONDS["24h"]}s`);
  const stats = await api(url.pathname + url.search);
  total.textContent = String(stats.total);
  const series = densify(stats, since);
  const tooltip = document.createElement("div");
  tooltip.className = "tooltip";
  tooltip.hidden = true;
  tooltip.setAttribute("role", "tooltip");
  const style = getComputedStyle(section);
  const width = Math.max(240, Math.round(section.clientWidth
    - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)));
  const openBucket = (start, end) => navigate(searchUrl(card.q, {
    from: new Date(start / 1000).toISOString(), to: new Date(end / 1000).toISOString(),
  }));
  const chart = timeChart(series, width, tooltip, go, openBucket);
  chart.setAttribute("aria-label", `${card.title}: ${stats.total} events over time`);
  const note = document.createElement("p");
  note.className = "axis-note";
  note.textContent = `Events per ${duration(series.step / 1e6)}, UTC`;
  section.append(tooltip, chart, note);
  if (card.list) section.append(topList(card, stats.top, since));
}

async function showDashboard() {
  showOnly("dashboard-view");
  const wanted = params().get("since");
  const since = RANGE_SECONDS[wanted] ? wanted : "24h";
  fillRanges($("dashboard-since"), since);
  const now = Date.now();
  $("dashboard-range").textContent = `${stamp(now - RANGE_SECONDS[since] * 1000)} – ${stamp(now)}`;
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

// ---- alerts ----

function groupText(group) {
  const entries = Object.entries(group || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "(all events)";
}

// The search for a group's events: the query the API gives, from a window before the alert's
// start (the events that made it fire) to `until`, or now.
function alertLink(query, topicId, startedAt, windowSeconds, until) {
  const from = new Date(Date.parse(startedAt) - windowSeconds * 1000).toISOString();
  const url = searchUrl(query, { from, to: until || null }, topicId);
  const a = document.createElement("a");
  a.href = url.pathname + url.search;
  a.textContent = "Open in search";
  a.className = "open-search";
  a.addEventListener("click", (e) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(url);
  });
  return a;
}

function timeCell(text) {
  const td = cell("");
  if (!text) { td.textContent = "never"; td.className = "muted"; return td; }
  const ms = Date.parse(text);
  const time = document.createElement("time");
  time.dateTime = text;
  time.textContent = stamp(ms);
  const rel = document.createElement("span");
  rel.className = "muted";
  rel.textContent = ` (${ago(ms)})`;
  td.append(time, rel);
  return td;
}

function codeCell(text) {
  const td = cell("");
  const code = document.createElement("code");
  code.textContent = text || "(every event)";
  td.append(code);
  return td;
}

function renderAlerts(alerts, topics, routed) {
  const rules = alerts.rules || [];
  const recent = alerts.recent || [];
  const names = new Map(topics.map((t) => [t.id, t]));
  const byName = new Map(rules.map((r) => [r.name, r]));
  const topicOf = (rule) => (rule && rule.topic) || routed;
  $("alerts-empty").hidden = rules.length > 0;
  $("alerts-content").hidden = rules.length === 0;

  const firing = [];
  const ruleRows = rules.map((rule) => {
    const tr = document.createElement("tr");
    tr.dataset.rule = rule.name;
    const id = topicOf(rule);
    const t = names.get(id);
    const groups = rule.firing || [];
    const firingCell = cell(groups.length ? `${groups.length} firing` : "no", groups.length ? "firing" : "muted");
    if (rule.ready === false) {
      firingCell.append(" (reading its window from the store)");
    }
    if (rule.overflowed > 0) {
      firingCell.append(` (${rule.overflowed} events of groups beyond the most a rule tracks, not counted)`);
    }
    tr.append(cell(rule.name), codeCell(rule.query), cell(`≥ ${rule.threshold}`),
      cell(duration(rule.windowSeconds)), cell((rule.groupBy || []).join(", ") || "(none)"),
      cell(rule.severity, `severity ${rule.severity || ""}`), cell(t ? topicLabel(t, routed) : id),
      firingCell, timeCell(rule.lastFiredAt));
    // The rule's own events, over its window up to now.
    const link = cell("");
    link.append(alertLink(rule.query, id, new Date().toISOString(), rule.windowSeconds, null));
    tr.append(link);
    if (rule.summary) tr.title = rule.summary;
    for (const group of groups) firing.push({ rule, group, id });
    return tr;
  });
  $("rules").tBodies[0].replaceChildren(...ruleRows);

  firing.sort((a, b) => Date.parse(b.group.since) - Date.parse(a.group.since));
  $("firing").tBodies[0].replaceChildren(...firing.map(({ rule, group, id }) => {
    const tr = document.createElement("tr");
    tr.dataset.rule = rule.name;
    const link = cell("");
    link.append(alertLink(group.query, id, group.since, rule.windowSeconds, null));
    tr.append(cell(rule.name), cell(rule.severity, `severity ${rule.severity || ""}`),
      cell(groupText(group.group)), cell(String(group.count)), timeCell(group.since), link);
    return tr;
  }));
  $("firing").hidden = firing.length === 0;
  $("firing-none").hidden = firing.length > 0;

  $("recent").tBodies[0].replaceChildren(...recent.map((entry) => {
    const rule = byName.get(entry.rule);
    const tr = document.createElement("tr");
    tr.dataset.rule = entry.rule;
    const link = cell("");
    link.append(alertLink(entry.query, entry.topic || topicOf(rule), entry.firedAt,
      rule ? rule.windowSeconds : 0, entry.resolvedAt));
    const resolved = entry.resolvedAt ? timeCell(entry.resolvedAt) : cell("still firing", "firing");
    tr.append(cell(entry.rule), cell(groupText(entry.group)), cell(String(entry.count)),
      timeCell(entry.firedAt), resolved, link);
    return tr;
  }));
  $("recent").hidden = recent.length === 0;
  $("recent-none").hidden = recent.length > 0;
  showBadge(alerts);
}

function showBadge(alerts) {
  const firing = (alerts.rules || []).reduce((n, r) => n + (r.firing || []).length, 0);
  $("alerts-badge").textContent = String(firing);
  $("alerts-badge").title = `${firing} alert ${firing === 1 ? "group" : "groups"} firing`;
  $("alerts-badge").hidden = firing === 0;
}

async function loadAlerts() {
  try {
    const [alerts, topics, routed] = await Promise.all([api("/v1/alerts"), allTopics(), routeTopic()]);
    $("alerts-error").textContent = "";
    renderAlerts(alerts, topics, routed);
    $("alerts-view").dataset.loaded = "true";
    status("");
  } catch (error) {
    failed(error, "alerts-error");
  }
}

async function showAlerts() {
  showOnly("alerts-view");
  delete $("alerts-view").dataset.loaded;
  status("Loading…");
  await loadAlerts();
  // Unless another view was chosen while this one loaded.
  if ($("alerts-view").hidden) return;
  clearInterval(state.alertsTimer);
  state.alertsTimer = setInterval(() => { if (!document.hidden) loadAlerts(); }, ALERTS_REFRESH_MS);
}

// ---- navigation ----

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

function route() {
  const view = location.pathname.startsWith("/ui/dashboard") ? "dashboard"
    : location.pathname.startsWith("/ui/alerts") ? "alerts" : "search";
  for (const name of ["search", "dashboard", "alerts"]) {
    $(`nav-${name}`).toggleAttribute("aria-current", view === name);
  }
  clearInterval(state.alertsTimer);
  state.alertsTimer = null;
  if (!token()) return signIn();
  if (view === "alerts") return showAlerts();
  // The count of firing groups by the nav link, where the API offers it.
  api("/v1/alerts").then(showBadge, () => {});
  if (view === "dashboard") showDashboard(); else showSearch();
}

window.addEventListener("popstate", route);
document.addEventListener("DOMContentLoaded", () => {
  const views = [["nav-search", "/ui/search"], ["nav-dashboard", "/ui/dashboard"], ["nav-alerts", "/ui/alerts"]];
  for (const [id, view] of views) {
    $(id).addEventListener("click", (e) => {
      e.preventDefault();
      const url = withTopic(new URL(view, location.origin));
      const since = params().get("since");
      if (view !== "/ui/alerts") url.searchParams.set("since", RANGE_SECONDS[since] ? since : "24h");
      navigate(url);
    });
  }
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    state.routeTopic = null;
    state.topics = null;
    route();
  });
  // The choice goes into the URL, so a link keeps its topic.
  $("topic").addEventListener("change", () => {
    const url = new URL(location.href);
    url.searchParams.set("topic", $("topic").value);
    state.cursors = [];
    navigate(url);
  });
  $("sign-out").addEventListener("click", () => signIn());
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.cursors = [];
    navigate(searchUrl($("q").value.trim(), chosenRange($("since"))));
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
