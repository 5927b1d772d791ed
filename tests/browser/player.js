// One playback per page load: window.play(scenario) plays an HLS or DASH URL with hls.js or dash.js
// and resolves with what happened, for tests/test_browser_playback.py to judge.
//
// scenario: {player: "hls" | "dash", url, level: index of the forced level/representation or null
// for ABR, rate: playbackRate, timeoutMs}. Levels are reported in the player's own order, each with
// its height, so the test can map the forced index to the rung whose segments must be fetched.
"use strict";

// Every SourceBuffer the players create, so a result can say where each track's media actually
// landed on the timeline (video.buffered only shows the intersection of the tracks).
const sourceBuffers = [];
const addSourceBuffer = MediaSource.prototype.addSourceBuffer;
MediaSource.prototype.addSourceBuffer = function (mime) {
  const buffer = addSourceBuffer.call(this, mime);
  sourceBuffers.push({mime, buffer});
  return buffer;
};

function ranges(timeRanges) {
  const out = [];
  for (let i = 0; i < timeRanges.length; i++) out.push([timeRanges.start(i), timeRanges.end(i)]);
  return out;
}

window.play = function play(scenario) {
  const video = document.getElementById("video");
  const result = {
    ended: false, timedOut: false, currentTime: null, duration: null,
    mediaErrors: [], playerErrors: [], levels: [], heights: [], forcedHeight: null,
  };
  const seenHeights = new Set();
  video.addEventListener("resize", () => seenHeights.add(video.videoHeight));
  // Stalls once playback has begun: from each `waiting` to the next `playing`, in wall-clock ms, and
  // the height shown at the end (the rung that played it).
  result.stalls = [];
  result.startupMs = null;  // from play() to the first picture moving
  result.startedAt = null;  // where on the timeline it did (0 for a start at the beginning)
  const asked = performance.now();
  let began = false;
  let waitingSince = null;
  video.addEventListener("playing", () => {
    if (result.startupMs === null) {
      result.startupMs = performance.now() - asked;
      result.startedAt = video.currentTime;
    }
    if (waitingSince !== null) result.stalls.push({at: video.currentTime, ms: performance.now() - waitingSince});
    began = true;
    waitingSince = null;
  });
  video.addEventListener("waiting", () => { if (began && waitingSince === null) waitingSince = performance.now(); });
  video.addEventListener("error", () => {
    const e = video.error;
    result.mediaErrors.push({code: e && e.code, message: e && e.message});
  });
  // Chrome mutes audio above 4x but keeps playing; muted also lifts the autoplay restriction.
  video.muted = true;

  let start;
  if (scenario.player === "hls") {
    start = playHls(video, scenario, result);
  } else {
    start = playDash(video, scenario, result);
  }

  return new Promise((resolve) => {
    let settled = false;
    const finish = (why) => {
      if (settled) return;
      settled = true;
      result.currentTime = video.currentTime;
      result.duration = video.duration;
      result.tracks = sourceBuffers.map(({mime, buffer}) => {
        try {
          return {mime, buffered: ranges(buffer.buffered), timestampOffset: buffer.timestampOffset};
        } catch (err) {  // removed from its MediaSource already
          return {mime, buffered: null, timestampOffset: null};
        }
      });
      result.heights = [...seenHeights].filter((h) => h > 0).sort((a, b) => a - b);
      result.endHeight = video.videoHeight;
      if (waitingSince !== null) result.stalls.push({at: video.currentTime, ms: performance.now() - waitingSince});
      result.finish = why;
      resolve(result);
    };
    video.addEventListener("ended", () => { result.ended = true; finish("ended"); });
    video.addEventListener("canplay", () => {
      video.playbackRate = scenario.rate;
      video.play().catch((err) => result.mediaErrors.push({code: null, message: "play(): " + err}));
    }, {once: true});
    // A fatal player error ends the attempt at once (the expired-token case); wait a moment so
    // that every error event of the failure is collected.
    result.onFatal = () => setTimeout(() => finish("fatal"), 500);
    setTimeout(() => { result.timedOut = true; finish("timeout"); }, scenario.timeoutMs);
    start();
  }).then((r) => { delete r.onFatal; return r; });
};

function playHls(video, scenario, result) {
  return () => {
    if (!Hls.isSupported()) {
      result.playerErrors.push({fatal: true, type: "unsupported", details: "Hls.isSupported() is false"});
      result.onFatal();
      return;
    }
    const config = {enableWorker: true, capLevelToPlayerSize: false};
    if (scenario.hlsLog) {
      // hls.js's own log, for a test that must show why a stream did or did not end.
      result.hlsLog = [];
      const keep = (level) => (...args) => result.hlsLog.push(`${level} ${args.join(" ")}`.slice(0, 300));
      config.debug = {log: keep("log"), info: keep("info"), warn: keep("warn"), error: keep("error"), debug: () => {}};
    }
    if (scenario.level !== null) config.startLevel = scenario.level;
    const hls = new Hls(config);
    window.hls = hls;
    hls.on(Hls.Events.MANIFEST_PARSED, (_event, data) => {
      result.levels = data.levels.map((l) => ({height: l.height, width: l.width, bitrate: l.bitrate}));
      if (scenario.level !== null) {
        // Manual level: hls.js turns ABR off and fetches only this level's fragments.
        hls.currentLevel = scenario.level;
        result.forcedHeight = data.levels[scenario.level].height;
      }
    });
    result.switches = [];
    hls.on(Hls.Events.LEVEL_SWITCHED, (_event, data) => {
      result.switches.push({height: hls.levels[data.level].height, at: video.currentTime});
    });
    hls.on(Hls.Events.ERROR, (_event, data) => {
      result.playerErrors.push({
        fatal: data.fatal, type: data.type, details: data.details,
        code: data.response ? data.response.code : null, url: data.url || (data.frag && data.frag.url) || null,
        at: video.currentTime, buffered: ranges(video.buffered),
      });
      if (data.fatal) result.onFatal();
    });
    hls.loadSource(scenario.url);
    hls.attachMedia(video);
  };
}

function playDash(video, scenario, result) {
  return async () => {
    const player = dashjs.MediaPlayer().create();
    window.dashPlayer = player;
    const forced = scenario.level !== null;
    const abr = {autoSwitchBitrate: {video: !forced}};
    if (forced) {
      // dash.js picks its first representation before any event lets us choose, so steer that first
      // pick with initialBitrate: the forced representation's own bandwidth (dash.js lists them by
      // bandwidth, lowest first), plus 1 kbit/s against rounding.
      const mpd = new DOMParser().parseFromString(await (await fetch(scenario.url)).text(), "application/xml");
      const bandwidths = [...mpd.querySelectorAll('AdaptationSet[contentType="video"] > Representation')]
        .map((r) => Number(r.getAttribute("bandwidth"))).sort((a, b) => a - b);
      abr.initialBitrate = {video: bandwidths[scenario.level] / 1000 + 1};
    }
    player.updateSettings({debug: {logLevel: dashjs.Debug.LOG_LEVEL_WARNING}, streaming: {abr}});
    const events = dashjs.MediaPlayer.events;
    player.on(events.STREAM_INITIALIZED, () => {
      const reps = player.getRepresentationsByType("video");
      result.levels = reps.map((r) => ({height: r.height, width: r.width, bitrate: r.bandwidth}));
      if (forced) {
        // ABR is off for video; pin the representation (a no-op when the first pick was right).
        player.setRepresentationForTypeByIndex("video", scenario.level);
        result.forcedHeight = reps[scenario.level].height;
      }
    });
    player.on(events.ERROR, (e) => {
      const error = e.error || {};
      result.playerErrors.push({
        fatal: true, type: "dash", details: String(error.message || error), code: error.code,
        at: video.currentTime, buffered: ranges(video.buffered),
      });
      result.onFatal();
    });
    player.initialize(video, scenario.url, false);
  };
}
