// Drives Debian's Chromium, headless, against the service graph page of
// `redirector collect --ui-addr` and prints what the page shows (read from the DOM) as JSON.
//
//   node service-graph.mjs --url http://127.0.0.1:PORT/ --screenshot PATH \
//     --first SRC->DST[,SRC->DST…] --then SRC->DST[,…] --select SRC->DST
//
// 1. Opens the page and waits until the `--first` edges are drawn, then prints `ready` on a
//    line of its own: the caller sends more traffic then.
// 2. Waits, without reloading, until the `--then` edges are drawn too (the page polls).
// 3. Clicks every edge in turn and reads its HTTP tab: the summary, the table, the top URLs.
// 4. Selects `--select`, waits for one more refresh (the selection must survive it), saves a
//    screenshot of the whole page, and prints the JSON on one line.
//
// Edge ids are the page's: `kind:namespace/name->kind:namespace/name`.

import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    screenshot: { type: "string" },
    first: { type: "string", default: "" },
    then: { type: "string", default: "" },
    select: { type: "string" },
    timeout: { type: "string", default: "30000" },
  },
});
const timeout = Number(args.timeout);
const list = s => s.split(",").filter(Boolean);

// Without the background-networking flags Chromium waits for the network, which this
// machine does not have. A fresh profile (`--user-data-dir`, which playwright passes for a
// persistent context) keeps runs apart.
const profile = mkdtempSync(join(tmpdir(), "l7r-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1360, height: 900 },
  timeout,
});
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
  const external = [];
  page.on("request", r => { if (!r.url().startsWith(new URL(args.url).origin)) external.push(r.url()); });
  await page.goto(args.url, { timeout });

  const edgesDrawn = ids => page.waitForFunction(
    ids => ids.every(id => document.querySelector(`g.edge[data-edge-id="${CSS.escape(id)}"]`)),
    ids, { timeout });
  await edgesDrawn(list(args.first));
  const updatesAtReady = Number(await page.getAttribute("body", "data-updates"));
  process.stdout.write("ready\n");
  await edgesDrawn(list(args.then));
  const updatesAtThen = Number(await page.getAttribute("body", "data-updates"));

  const nodes = await page.$$eval("g.node", gs => gs.map(g => ({
    id: g.dataset.nodeId,
    kind: g.dataset.kind,
    text: [...g.querySelectorAll("text")].map(t => t.textContent).filter(Boolean),
  })));
  const edges = await page.$$eval("g.edge[data-edge-id]", gs => gs.map(g => ({
    id: g.dataset.edgeId,
    source: g.dataset.source,
    target: g.dataset.target,
    health: ["ok", "warn", "bad", "idle"].find(c => g.classList.contains(c)),
    label: document.querySelector(`g[data-edge-label="${CSS.escape(g.dataset.edgeId)}"]`)
      ?.textContent ?? null,
  })));

  // The HTTP tab of the selected edge, as shown.
  const readDetails = () => page.evaluate(() => ({
    title: document.getElementById("edge-title").textContent,
    stats: Object.fromEntries([...document.querySelectorAll("#edge-stats [data-stat]")]
      .map(d => [d.dataset.stat, d.querySelector("dd").textContent])),
    rows: [...document.querySelectorAll("#http-table tbody tr")].map(tr =>
      [...tr.querySelectorAll("td")].map(td => td.textContent)),
    top_urls: [...document.querySelectorAll("#top-urls tbody tr")].map(tr =>
      [...tr.querySelectorAll("td")].map(td => td.textContent)),
  }));
  const open = async id => {
    await page.click(`g[data-edge-label="${id}"]`);
    await page.waitForSelector(`g.edge.selected[data-edge-id="${id}"]`, { state: "attached", timeout });
    await page.waitForSelector("#edge:not([hidden])", { timeout });
  };
  const details = {};
  for (const e of edges) {
    await open(e.id);
    details[e.id] = await readDetails();
  }

  await open(args.select);
  const before = Number(await page.getAttribute("body", "data-updates"));
  await page.waitForFunction(n => Number(document.body.dataset.updates) > n, before, { timeout });
  const stillSelected = await page.$(`g.edge.selected[data-edge-id="${args.select}"]`) !== null;
  const selected = await readDetails();
  mkdirSync(dirname(args.screenshot), { recursive: true });
  await page.screenshot({ path: args.screenshot, fullPage: true });
  process.stdout.write(JSON.stringify({
    nodes, edges, details, selected, still_selected: stillSelected,
    updates_at_ready: updatesAtReady, updates_at_then: updatesAtThen,
    status: await page.textContent("#status"),
    errors, external,
  }) + "\n");
} catch (e) {
  // What the page looked like when it went wrong, beside the screenshot it would have taken.
  const page = browser.pages()[0];
  if (page && args.screenshot) {
    mkdirSync(dirname(args.screenshot), { recursive: true });
    await page.screenshot({ path: args.screenshot.replace(/\.png$/, "") + "-failed.png", fullPage: true })
      .catch(() => {});
  }
  throw e;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
