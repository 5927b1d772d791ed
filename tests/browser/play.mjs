// Drives Debian's chromium headless through Playwright and plays each scenario in a fresh page.
//
//   node play.mjs PAGE_URL < scenarios.json > results.json
//
// PAGE_URL is player.html on the test's static server (another origin than the API). Each result
// is what window.play() reported plus every HTTP response the page saw (URL, status, CORS header),
// so the test can check which rung's segments were fetched and that an expired token got a 403.
// A scenario with `throttleKbps` plays on a network throttled to that many kbit/s; one with
// `keepPlaylists` also reports the text of every playlist the page got, in order (a growing
// stream's playlists change from one reload to the next).
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
];

const pageUrl = process.argv[2];
const scenarios = JSON.parse(readFileSync(0, "utf8"));
// A fresh profile each run: nothing cached from an earlier run can make a request look answered.
const profile = mkdtempSync(join(tmpdir(), "vidfarm-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 60_000,
});
const results = [];
try {
  for (const scenario of scenarios) {
    const page = await context.newPage();
    const responses = [];
    const console_ = [];
    page.on("response", (r) => responses.push({
      url: r.url(), status: r.status(), cors: r.headers()["access-control-allow-origin"] ?? null,
    }));
    const playlists = [];
    if (scenario.keepPlaylists) {
      page.on("response", (r) => {
        if (r.url().split("?")[0].endsWith(".m3u8") && r.status() === 200) {
          playlists.push(r.text().then((text) => ({url: r.url(), text}), () => null));
        }
      });
    }
    page.on("requestfailed", (r) => responses.push({url: r.url(), status: null, failure: r.failure()?.errorText}));
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console_.push(m.text()); });
    page.on("pageerror", (e) => console_.push("pageerror: " + e.message));
    const started = Date.now();
    await page.goto(pageUrl);
    if (scenario.throttleKbps) {
      // A slow network as the DevTools protocol emulates it, from here on: the page and its players
      // are loaded already (as from a cache); the manifests and segments share the throughput.
      const cdp = await context.newCDPSession(page);
      await cdp.send("Network.enable");
      await cdp.send("Network.emulateNetworkConditions", {
        offline: false, latency: scenario.latencyMs ?? 40,
        downloadThroughput: scenario.throttleKbps * 1000 / 8, uploadThroughput: scenario.throttleKbps * 1000 / 8,
      });
    }
    const outcome = await page.evaluate((s) => window.play(s), scenario);
    const texts = (await Promise.all(playlists)).filter(Boolean);
    results.push({...scenario, ...outcome, responses, playlists: texts, console: console_,
                  seconds: (Date.now() - started) / 1000});
    await page.close();
  }
} finally {
  await context.close();
  rmSync(profile, {recursive: true, force: true});
}
process.stdout.write(JSON.stringify(results));
