// Drives Debian's Chromium (through playwright-core) against a collector holding known events:
// a wrong token gets no data, the search finds the expected rows and keeps the query in the URL,
// a dashboard chart has time and count axes, shows a bar's count on hover and opens the matching
// search; the topic picker switches topics through the URL; the Alerts view lists the rules and
// the firing group, whose link opens the search for that group. Screenshots go to OUT_DIR.
// Run by tests/ui_browser.rs, which starts the collector and passes everything in the environment.
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(`${env("CLUSTERAUDIT_BROWSER_MODULES")}/`);
const { chromium } = require("playwright-core");

const base = env("COLLECTOR_URL");
const out = env("OUT_DIR");
const timeout = 30_000;

const browser = await chromium.launch({
  executablePath: env("CLUSTERAUDIT_CHROMIUM"),
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  // The collector's certificate comes from a CA the test made.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1360, height: 900 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  const rows = () => page.locator("#results tbody tr");
  const signIn = async (token) => {
    await page.fill("#token", token);
    await page.click("#sign-in-form button[type=submit]");
  };

  // A wrong token: sent back to sign in, no data on the page.
  await page.goto(`${base}/ui/search?q=${encodeURIComponent("verb:delete")}&since=24h`);
  await page.waitForSelector("#sign-in:not([hidden])");
  await signIn("not-a-token");
  await page.waitForSelector("#sign-in-error:has-text('did not accept')");
  assert.equal(await rows().count(), 0, "no rows for a wrong token");

  // A real user the cluster's RBAC does not let read audit logs: told so, no data.
  await signIn(env("DENIED_TOKEN"));
  await page.waitForSelector("#search-error:has-text('Not allowed')");
  assert.equal(await rows().count(), 0, "no rows without the grant");
  await page.click("#sign-out");

  // A reader: the query from the URL runs, and finds the deletion.
  await page.goto(`${base}/ui/search?q=${encodeURIComponent("verb:delete and namespace:shop")}&since=24h`);
  await signIn(env("READER_TOKEN"));
  await page.waitForSelector("#results tbody tr");
  assert.equal(await rows().count(), 1, "one deletion in shop");
  const row = await rows().first().innerText();
  for (const text of ["alice", "delete", "deployments", "shop/web", "200", "10.0.0.7"]) {
    assert.ok(row.includes(text), `the row shows ${text}: ${row}`);
  }
  assert.equal(await page.inputValue("#q"), "verb:delete and namespace:shop");
  // The full event on click.
  await rows().first().click();
  await page.waitForSelector("#detail:not([hidden])");
  assert.ok((await page.innerText("#detail-json")).includes("\"auditID\": \"e2e-delete-web\""));
  // A new query goes into the URL, so it can be shared.
  await page.fill("#q", "resource:secrets");
  await page.click("#search-form button[type=submit]");
  await page.waitForURL(/q=resource%3Asecrets/);
  await page.waitForFunction(() => document.querySelectorAll("#results tbody tr").length === 3);
  assert.ok((await rows().first().innerText()).includes("mallory"), "newest first");
  assert.ok((await rows().nth(1).innerText()).includes("bob"));
  await page.screenshot({ path: `${out}/search.png`, fullPage: true });

  // The dashboard: top users, failures, sensitive operations; a chart opens its search.
  await page.click("#nav-dashboard");
  await page.waitForURL(/\/ui\/dashboard/);
  await page.waitForSelector("#cards[data-loaded=true]");
  assert.ok((await page.innerText("[data-card=users]")).includes("alice"));
  assert.equal((await page.innerText("[data-card=failed] .total")).trim(), "2");
  assert.equal((await page.innerText("[data-card=exec] .total")).trim(), "1");
  assert.equal((await page.innerText("[data-card=deletions] .total")).trim(), "1");
  assert.equal((await page.innerText("[data-card=rbac] .total")).trim(), "1");

  // The chart's axes: times (UTC, HH:MM or a day) along the bottom, counts up the side from 0.
  const chart = page.locator("[data-card=operations] svg");
  const xLabels = await chart.locator(".axis.x text").allTextContents();
  assert.ok(xLabels.length >= 3, `time ticks: ${xLabels}`);
  for (const label of xLabels) {
    assert.match(label, /^(\d\d:\d\d|[A-Z][a-z]{2} \d{1,2})$/, `a time tick: ${label}`);
  }
  const yLabels = await chart.locator(".axis.y text").allTextContents();
  assert.equal(yLabels[0], "0", `counts start at 0: ${yLabels}`);
  assert.ok(yLabels.length >= 2, `count ticks: ${yLabels}`);
  assert.ok(Number(yLabels[yLabels.length - 1]) >= 1);
  assert.match(await page.innerText("[data-card=operations] .axis-note"), /Events per 30m, UTC/);
  // Every event is in a bar; hovering a bar shows its interval and its count.
  const counts = (await chart.locator(".bucket").evaluateAll(
    (bars) => bars.map((b) => Number(b.dataset.count))));
  assert.equal(counts.reduce((a, b) => a + b, 0), 9, `bars: ${counts}`);
  const busy = chart.locator(".bucket:not([data-count='0'])").last();
  const busyCount = Number(await busy.getAttribute("data-count"));
  await busy.hover();
  const tooltip = page.locator("[data-card=operations] .tooltip");
  await tooltip.waitFor({ state: "visible" });
  const hovered = await tooltip.innerText();
  assert.match(hovered, /^[A-Z][a-z]{2} \d{1,2} \d\d:\d\d–([A-Z][a-z]{2} \d{1,2} )?\d\d:\d\d UTC: (\d+) events?$/, hovered);
  assert.equal(Number(hovered.match(/: (\d+) event/)[1]), busyCount, hovered);
  await page.screenshot({ path: `${out}/dashboard.png`, fullPage: true });
  // That bar opens the search over its own interval, finding its events.
  await busy.click();
  await page.waitForURL(/\/ui\/search\?.*from=.*to=/);
  await page.waitForFunction((n) => document.querySelectorAll("#results tbody tr").length === n
    && document.querySelector("#status").textContent.includes("events"), busyCount);
  await page.goBack();
  await page.waitForSelector("#cards[data-loaded=true]");
  await page.locator("[data-card=deletions] svg").click();
  await page.waitForURL(/\/ui\/search\?q=verb%3Adelete/);
  await page.waitForSelector("#results tbody tr");
  assert.ok((await rows().first().innerText()).includes("deployments"));
  // A top-list entry narrows the search to that value.
  await page.goBack();
  await page.waitForSelector("#cards[data-loaded=true]");
  await page.locator("[data-card=failed] .toplist li button", { hasText: "403" }).click();
  await page.waitForURL(/code%3A403/);
  await page.waitForSelector("#results tbody tr");
  assert.ok((await rows().first().innerText()).includes("mallory"));

  // The topic picker lists the topics; choosing one puts it in the URL, and the views read it.
  const secrets = env("SECRETS_TOPIC");
  await page.click("#nav-dashboard");
  await page.waitForSelector("#cards[data-loaded=true]");
  assert.equal((await page.innerText("[data-card=operations] .total")).trim(), "9");
  const topics = await page.locator("#topic option").allInnerTexts();
  assert.ok(topics.some((t) => t.endsWith("/secrets")), `the picker: ${topics}`);
  assert.ok(topics.some((t) => t.endsWith("(webhook)")), `the picker: ${topics}`);
  await page.selectOption("#topic", secrets);
  await page.waitForURL(new RegExp(`/ui/dashboard\\?.*topic=${secrets}`));
  await page.waitForFunction(() => document.querySelector("#cards[data-loaded=true] [data-card=operations] .total")
    ?.textContent.trim() === "3");
  // The topic stays in the URL from view to view, and the picker says which it is.
  await page.click("#nav-search");
  await page.waitForURL(new RegExp(`/ui/search\\?.*topic=${secrets}`));
  await page.waitForFunction(() => document.querySelectorAll("#results tbody tr").length === 3);
  assert.equal(await page.inputValue("#topic"), secrets);
  for (let i = 0; i < 3; i++) assert.ok((await rows().nth(i).innerText()).includes("secrets"));

  // The Alerts view: both rules, the firing group for alice, and its link to her deletions.
  await page.click("#nav-alerts");
  await page.waitForURL(/\/ui\/alerts/);
  await page.waitForSelector("#alerts-view[data-loaded=true]");
  assert.ok(await page.locator("#topic-picker").isHidden(), "alerts span every topic");
  const rule = await page.innerText("#rules tr[data-rule=deletions-in-shop]");
  for (const text of ["verb:delete and namespace:shop", "≥ 1", "1h", "user", "warning", "1 firing"]) {
    assert.ok(rule.includes(text), `the rule shows ${text}: ${rule}`);
  }
  const ruleLink = new URL(await page.locator("#rules tr[data-rule=deletions-in-shop] a").getAttribute("href"), base);
  assert.equal(ruleLink.searchParams.get("q"), "verb:delete and namespace:shop", ruleLink.search);
  assert.ok(ruleLink.searchParams.get("from"), ruleLink.search);
  const quiet = await page.innerText("#rules tr[data-rule=exec-in-kube-system]");
  for (const text of ["critical", "5m", "no", "never"]) {
    assert.ok(quiet.includes(text), `the quiet rule shows ${text}: ${quiet}`);
  }
  const group = page.locator("#firing tr[data-rule=deletions-in-shop]");
  assert.equal(await group.count(), 1);
  const groupText = await group.innerText();
  assert.ok(groupText.includes("user=alice"), groupText);
  assert.equal((await group.locator("td").nth(3).innerText()).trim(), "1");
  const firedRow = await page.innerText("#recent tr[data-rule=deletions-in-shop]");
  assert.ok(firedRow.includes("user=alice") && firedRow.includes("still firing"), firedRow);
  assert.match(await page.innerText("#nav-alerts .badge"), /^1$/);
  await page.screenshot({ path: `${out}/alerts.png`, fullPage: true });
  // Its link: the group's query (as the API gives it) from a window (1h) before it fired.
  const since = Date.parse(await group.locator("time").getAttribute("datetime"));
  await group.locator("a").click();
  await page.waitForURL(/\/ui\/search\?q=.*from=/);
  assert.equal(await page.inputValue("#q"), env("FIRING_QUERY"));
  const link = new URL(page.url());
  assert.equal(Date.parse(link.searchParams.get("from")), since - 3600_000, link.search);
  await page.waitForFunction(() => document.querySelectorAll("#results tbody tr").length === 1);
  const deletion = await rows().first().innerText();
  assert.ok(deletion.includes("alice") && deletion.includes("delete"), deletion);

  // With no rules, the view says how to get one.
  const cleared = await context.request.put(`${base}/v1/alerts`, {
    headers: { Authorization: `Bearer ${env("ADMIN_TOKEN")}` },
    data: { rules: [] },
  });
  assert.equal(cleared.status(), 200, await cleared.text());
  await page.click("#nav-alerts");
  await page.waitForSelector("#alerts-empty:not([hidden])");
  assert.match(await page.innerText("#alerts-empty"), /No alert rules: apply an AuditAlert/);
  assert.ok(await page.locator("#alerts-content").isHidden());
  console.log("browser checks passed");
} finally {
  await browser.close();
}
