// Drives Debian's Chromium (through playwright-core) against a collector holding known events:
// a wrong token gets no data, the search finds the expected rows and keeps the query in the URL,
// a dashboard chart opens the matching search. Screenshots of both pages go to OUT_DIR.
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
  await page.screenshot({ path: `${out}/dashboard.png`, fullPage: true });
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
  console.log("browser checks passed");
} finally {
  await browser.close();
}
