// Test page entry for Segment analytics.js 2.0 (npm `@segment/analytics-next`). Bundled by
// esbuild in tests/browser/sdk.mjs and served on a different origin from Keel. The SDK takes
// its settings from Keel (`cdnURL` → `/v1/projects/{writeKey}/settings`, whose `Segment.io`
// integration sends to Keel). `window.KEEL_TEST` (written into the page by the driver) says
// where Keel is and which mode this load is in: `xhr` (the default: one `fetch` per event,
// with the persisted retry queue) or `unload` (the `batching` delivery strategy: events wait
// in the batch and leave in a `keepalive` fetch when the page is hidden).
// The driver calls `window.keelTest.*`.
import { AnalyticsBrowser } from '@segment/analytics-next';

const cfg = window.KEEL_TEST;
const unload = cfg.mode === 'unload';

const integrations = unload
  ? {
      'Segment.io': {
        deliveryStrategy: { strategy: 'batching', config: { size: 100, timeout: 10 * 60 * 1000 } },
      },
    }
  : {};
const analytics = AnalyticsBrowser.load({ writeKey: cfg.writeKey, cdnURL: cfg.keelUrl }, { integrations });

const ready = new Promise((resolve, reject) => {
  analytics.ready(() => resolve()).catch(reject);
});

window.keelTest = {
  sdk: 'segment',
  ready,
  anonymousId: async () => (await analytics.user()).anonymousId(),
  userId: async () => (await analytics.user()).id() ?? null,
  identify: (userId, traits) => {
    analytics.identify(userId, traits);
  },
  track: (event, properties) => {
    analytics.track(event, properties);
  },
  page: (name, properties) => {
    analytics.page(name, properties);
  },
};
document.getElementById('status').textContent = `Segment analytics.js 2.0 (${cfg.mode})`;
ready.then(() => {
  document.getElementById('status').textContent += ' ready';
});
