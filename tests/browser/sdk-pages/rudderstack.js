// Test page entry for the RudderStack JS SDK v3 (npm `@rudderstack/analytics-js`, its
// `bundled` build: every plugin is in the bundle, none is loaded from a CDN). Bundled by
// esbuild in tests/browser/sdk.mjs and served on a different origin from Keel. The SDK takes
// its settings from Keel (`configUrl`) and sends to Keel (data plane URL). `window.KEEL_TEST`
// (written into the page by the driver) says where Keel is and which mode this load is in:
// `xhr` (the default XHR queue with its retries) or `unload` (`useBeacon`: events wait in the
// beacon queue and leave with `navigator.sendBeacon` when the page is hidden).
// The driver calls `window.keelTest.*`.
import { RudderAnalytics } from '@rudderstack/analytics-js/bundled';

const cfg = window.KEEL_TEST;
const analytics = new RudderAnalytics();
const unload = cfg.mode === 'unload';

const ready = new Promise((resolve) => {
  analytics.load(cfg.writeKey, cfg.keelUrl, {
    configUrl: cfg.keelUrl,
    // Nothing from RudderStack's CDNs: a polyfill is never needed by this Chromium.
    polyfillIfRequired: false,
    useBeacon: unload,
    // Hold beacon events until the page is left (the flush on `pagehide` sends them).
    beaconQueueOptions: { maxItems: 100, flushQueueInterval: 10 * 60 * 1000 },
    // Retry quickly, so a retry within the test is seconds, not minutes.
    queueOptions: { minRetryDelay: 200, maxRetryDelay: 1000 },
    logLevel: 'WARN',
  });
  analytics.ready(() => resolve());
});

window.keelTest = {
  sdk: 'rudderstack',
  ready,
  anonymousId: () => analytics.getAnonymousId(),
  userId: () => analytics.getUserId() ?? null,
  identify: (userId, traits) => analytics.identify(userId, traits),
  track: (event, properties) => analytics.track(event, properties),
  page: (name, properties) => analytics.page(name, properties),
};
document.getElementById('status').textContent = `RudderStack JS SDK (${cfg.mode})`;
ready.then(() => {
  document.getElementById('status').textContent += ' ready';
});
