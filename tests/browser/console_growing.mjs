// Drives the web console at / in Debian's chromium, headless: a video still processing gets its Play
// button once it is playable, and plays from the start while the rest is encoded.
//
//   node console_growing.mjs '{"url": ..., "key": ..., "videoId": ...}'
//
// Prints one line: the JSON of what the page showed (`failure` when a step did not happen in time).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
];

const plan = JSON.parse(process.argv[2]);
const result = { errors: [] };
const profile = mkdtempSync(join(tmpdir(), "vidfarm-console-"));
const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS });
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(120_000);
page.on("pageerror", (e) => result.errors.push(`pageerror: ${e.message}`));
try {
  await page.goto(plan.url);
  await page.fill("#api-key", plan.key);
  await page.press("#api-key", "Enter");
  const row = page.locator(`#video-list .row[data-id="${plan.videoId}"]`);
  await row.locator(".play").waitFor({ state: "visible" });
  result.statusAtPlay = await row.locator(".status").textContent();
  await row.locator(".play").click();
  await page.waitForFunction(() => document.querySelector("#video").currentTime > 1);
  result.playing = await page.evaluate(() => ({
    info: document.querySelector("#player-info").textContent,
    status: document.querySelector("#video-list .row .status").textContent,
  }));
  await page.waitForFunction(() => document.querySelector("#video").ended, null, { timeout: 240_000 });
  result.ended = await page.evaluate(() => {
    const v = document.querySelector("#video");
    return { currentTime: v.currentTime, duration: v.duration, status: document.querySelector("#video-list .row .status").textContent };
  });
} catch (error) {
  result.failure = String(error.stack || error);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
