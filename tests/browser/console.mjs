// Drives the web console at / in Debian's chromium, headless, through Playwright, as a person would.
//
//   node console.mjs    (first line on stdin: the plan, as JSON)
//
// plan: {url, key, wrongKey, clip, notVideo, tooLarge, workerName, shots}. Talks to the test on
// stdout/stdin: it prints "NEED-WORKER" with the upload paused and the farm page open, and waits
// for a line on stdin (the test has started a worker); its last line is "RESULT <json>".
import { mkdtempSync, rmSync } from "node:fs";
import { createInterface } from "node:readline";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
];
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };
const SLOW_UPLOAD = 64 * 1024; // bytes per second while the upload is watched

const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const plan = JSON.parse((await stdin.next()).value);
const result = { steps: [], errors: [], screenshots: [], streams: [] };
const step = (name, data = {}) => result.steps.push({ name, at: Date.now(), ...data });

const profile = mkdtempSync(join(tmpdir(), "vidfarm-console-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 60_000, viewport: DESKTOP,
});
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(30_000);
page.on("pageerror", (e) => result.errors.push(`pageerror: ${e.message}`));
// Refused requests (the wrong key, the bad files) are logged by the browser too: those are expected.
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) result.errors.push(`console: ${m.text()}`);
});
page.on("dialog", (d) => d.accept()); // the delete confirmation
page.on("request", (r) => { if (r.url().endsWith("/events")) result.streams.push(r.headers().authorization ? "with key" : "no key"); });
const cdp = await context.newCDPSession(page);
const throttle = (bytesPerSecond) => cdp.send("Network.emulateNetworkConditions",
  { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bytesPerSecond });
const shot = async (name) => {
  const path = join(plan.shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  result.screenshots.push(path);
};
const text = (selector) => page.locator(selector).innerText();

try {
  // Sign in: a wrong key first, then the right one.
  await page.goto(plan.url);
  await page.fill("#api-key", plan.wrongKey);
  await page.press("#api-key", "Enter");
  await page.locator("#sign-in-error").waitFor();
  step("wrong key", { message: await text("#sign-in-error") });
  await shot("sign-in-wrong-key");
  await page.fill("#api-key", plan.key);
  await page.click("#sign-in-form button[type=submit]");
  await page.locator("#videos").waitFor();
  step("signed in", { mode: await text("#upload-mode") });

  // Upload the clip by the file input, slowly enough to watch the progress bar move.
  await throttle(SLOW_UPLOAD);
  await page.setInputFiles("#file", plan.clip);
  const upload = page.locator("#uploads .row").first();
  await page.waitForFunction(() => {
    const bar = document.querySelector("#uploads .row progress");
    return bar && bar.value > 0 && bar.value < 1;
  });
  step("uploading", { progress: await upload.locator("progress").evaluate((bar) => bar.value),
                      meta: await upload.locator(".meta").innerText() });
  await shot("uploading");
  const pausable = await upload.locator(".pause").isVisible();
  if (pausable) {
    await upload.locator(".pause").click();
    const paused = await upload.locator("progress").evaluate((bar) => bar.value);
    await page.waitForTimeout(1000);
    step("paused", { progress: paused, status: await upload.locator(".status").textContent(),
                     after: await upload.locator("progress").evaluate((bar) => bar.value) });
  }

  // The farm page, while the upload waits: no worker yet, then the test starts one.
  await page.click("#nav-farm");
  await page.locator("#farm").waitFor();
  await page.waitForFunction(() => document.querySelector("#workers tbody").innerText.includes("No workers"));
  step("farm without workers", { workers: await text("#workers tbody") });
  console.log("NEED-WORKER");
  await stdin.next();
  await page.waitForFunction((name) => document.querySelector("#workers tbody").innerText.includes(name),
    plan.workerName);
  step("worker appeared", { workers: await text("#workers tbody"), pools: await text("#pools tbody") });

  // Back to the videos: resume, and follow the video to `ready`, noting every status shown.
  await page.click("#nav-videos");
  await throttle(-1);
  if (pausable) await upload.locator(".resume").click();
  await page.waitForFunction(() => document.querySelector("#uploads .row .status").textContent !== "uploading"
    && document.querySelector("#uploads .row .status").textContent !== "paused", null, { timeout: 60_000 });
  step("uploaded", { status: await upload.locator(".status").textContent(), error: await upload.locator(".error").textContent() });
  const video = page.locator("#video-list .row").first();
  await video.waitFor();
  const seen = await page.evaluate(() => new Promise((resolve, reject) => {
    const statuses = [];
    const timer = setInterval(() => {
      const row = document.querySelector("#video-list .row");
      const status = row.querySelector(".status").textContent;
      const progress = row.querySelector("progress").value;
      const last = statuses[statuses.length - 1];
      if (!last || last.status !== status || last.progress !== progress) statuses.push({ status, progress });
      if (status === "ready") { clearInterval(timer); resolve(statuses); }
      if (status === "failed" || status === "canceled") { clearInterval(timer); reject(new Error(`video ${status}: ${row.innerText}`)); }
    }, 50);
    setTimeout(() => { clearInterval(timer); reject(new Error(`not ready in time: ${JSON.stringify(statuses)}`)); }, 120_000);
  }));
  const videoId = await video.getAttribute("data-id");
  step("ready", { id: videoId, seen, row: await video.innerText() });
  // Each rendition is listed with its quality score once the whole document is fetched.
  await video.locator(".renditions li").first().waitFor({ timeout: 15_000 });
  step("scored", { renditions: await video.locator(".renditions").innerText() });
  await page.click("#nav-farm");
  await page.waitForTimeout(1500); // a couple more samples in the chart
  await shot("farm");
  step("farm after", { chart: await text("#chart-caption"), queues: await text("#queues tbody") });
  await page.click("#nav-videos");

  // Play it to the end.
  await video.locator(".play").click();
  await page.locator("#player").waitFor();
  await page.waitForFunction(() => document.querySelector("#video").currentTime > 0.5);
  await shot("playing");
  await page.waitForFunction(() => document.querySelector("#video").ended, null, { timeout: 60_000 });
  step("played", await page.evaluate(() => {
    const v = document.querySelector("#video");
    return { ended: v.ended, currentTime: v.currentTime, duration: v.duration, error: v.error && v.error.message,
             info: document.querySelector("#player-info").textContent, width: v.videoWidth, height: v.videoHeight };
  }));

  // Clear errors: a file that is not a video, and one over the size limit.
  for (const [name, path] of [["not a video", plan.notVideo], ["too large", plan.tooLarge]]) {
    await page.setInputFiles("#file", path);
    const row = page.locator("#uploads .row").first();
    await row.locator(".error").waitFor({ timeout: 60_000 });
    step(name, { message: await row.locator(".error").innerText() });
  }
  await shot("errors");

  // At phone width.
  await page.setViewportSize(PHONE);
  await shot("phone-videos");
  await page.click("#nav-farm");
  await shot("phone-farm");
  await page.click("#nav-videos");
  await page.setViewportSize(DESKTOP);

  // Delete it, by keyboard: Tab to the button, Enter.
  await video.locator(".delete").focus();
  await page.keyboard.press("Enter");
  await page.waitForFunction((id) => !document.querySelector(`#video-list .row[data-id="${id}"]`), videoId);
  step("deleted", { player: await page.locator("#player").isHidden() });
} catch (error) {
  result.failure = String(error.stack || error);
  await shot("failure").catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(0);
