// PostHog through its capture API (https://posthog.com/docs/api/capture): every event is
// one item of POST {instance}/batch {api_key, batch: [{event, distinct_id, properties,
// timestamp, …}]}; process() answers the single-event form (the item itself with api_key
// and type beside it), which PostHog's /batch endpoint also takes.
// Auth: the project API key (`teamApiKey`) in the body (`api_key`); no header.
// Config (RudderStack's keys): teamApiKey (required), yourInstance (the PostHog instance,
// e.g. https://eu.posthog.com or a self-hosted origin; default https://app.posthog.com),
// useV2Group (group → $groupidentify with $group_type/$group_key/$group_set).
// Keel extension: apiBaseUrl replaces the origin (over yourInstance).
// Mapping (type → event):
//   track → the event name, type "capture", properties = event properties;
//   identify → "$identify" with $set = traits (required) and the messageId;
//   page → "$pageview", screen → "$screen" ($screen_name = event), both with properties,
//     name and category;
//   group → "$groupidentify": useV2Group → properties.$group_type (traits.groupType),
//     $group_key (groupId), $group_set (traits without groupType), $groups {type: key};
//     otherwise the legacy form {groupId, traits};
//   alias → "$create_alias" with properties.distinct_id (userId) and properties.alias
//     (previousId).
//   Every event's properties also carry PostHog's standard properties ($os, $current_url,
//   $pathname, $host, $lib, $ip, $device_*, $app_*, utm_*, $anon_distinct_id, distinct_id,
//   $time, $timestamp, …) from the context; web events add $browser/$browser_version and
//   $os parsed from the user agent; non-identify events carry context.traits as $set.
//   distinct_id: userId, traits.userId/id, context.traits.userId/id, else anonymousId
//   (required). Other event types are skipped.
// Batching: batch() puts events bound for the same instance and project key into one
// /batch body {api_key, batch: [items without api_key]} (≤ 10 MB per request as
// RudderStack chunks it; PostHog takes up to 20 MB). PostHog answers {"status": 1} for a
// whole batch, no per-item results: batchResponse() lets the HTTP status decide for all.
// Departures from RudderStack: the user-agent parser is a small built-in one (browser
// and OS names as ua-parser-js 1.x reports them for the common browsers); when a web
// event's user agent names no OS, $os keeps context.os.name (RudderStack puts the whole
// message there). The 900,000-byte event limit RudderStack's router enforces is checked
// in process() for every event (400).
import { DestinationError, UnsupportedEventError, baseUrl, isSet } from "keel";

export const maxBatchSize = 500;
export const maxBatchBytes = 10 * 1024 * 1024;

const DEFAULT_ORIGIN = "https://app.posthog.com";
const MAX_EVENT_BYTES = 900_000;
const MAX_BATCH_BODY_BYTES = 10 * 1024 * 1024;

// ---------- helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

const present = (v) => Boolean(v) || v === 0 || v === false;
// The first value among `paths` that is truthy, 0 or false.
function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (present(v)) return v;
  }
  return undefined;
}

function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (let i = 0; i < keys.length - 1; i += 1) {
    if (o[keys[i]] === null || typeof o[keys[i]] !== "object") o[keys[i]] = {};
    o = o[keys[i]];
  }
  o[keys[keys.length - 1]] = value;
}

function dropNulls(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (isSet(v)) out[k] = v;
  return out;
}

function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i += 1) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      n += 4;
      i += 1;
    } else n += 3;
  }
  return n;
}

// RudderStack's generic field lists.
const GENERIC = {
  userId: ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id", "anonymousId"],
  timestamp: ["timestamp", "originalTimestamp"],
  traits: ["traits", "context.traits"],
  groupId: ["groupId", "traits.groupId"],
};

// A mapping: [destKey, sourceKeys (a generic name with `generic`, a path or a list),
// required, generic].
function construct(event, mapping) {
  const out = {};
  for (const [dest, source, required, generic] of mapping) {
    let v;
    if (generic) v = first(event, GENERIC[source]);
    else if (Array.isArray(source)) v = first(event, source);
    else v = get(event, source);
    if (present(v)) setPath(out, dest, v);
    else if (required) throw new DestinationError(`Missing required value from ${JSON.stringify(source)}`, 400);
  }
  return out;
}

const TIMESTAMP = ["timestamp", "timestamp", false, true];
const DISTINCT_ID = ["distinct_id", "userId", true, true];

const MAPPINGS = {
  track: [DISTINCT_ID, ["event", "event", true], ["messageId", "messageId", true], ["properties", "properties"], TIMESTAMP],
  identify: [DISTINCT_ID, TIMESTAMP, ["messageId", "messageId", true], ["$set", "traits", true, true]],
  page: [["properties", "properties"], TIMESTAMP, ["category", "category"], DISTINCT_ID, ["name", "name"], ["messageId", "messageId"]],
  alias: [["properties.distinct_id", "userId", true, true], ["properties.alias", "previousId", true], TIMESTAMP],
  groupV1: [TIMESTAMP, ["groupId", "groupId", false, true], DISTINCT_ID, ["traits", "traits", false, true], ["messageId", "messageId"]],
  groupV2: [
    TIMESTAMP, ["properties.$group_key", "groupId", false, true], DISTINCT_ID,
    ["properties.$group_set", "traits"], ["messageId", "messageId"], ["properties.$group_type", "traits.groupType"],
  ],
};
MAPPINGS.screen = MAPPINGS.page;

const EVENT_NAMES = { identify: "$identify", group: "$groupidentify", page: "$pageview", screen: "$screen", alias: "$create_alias" };
const API_TYPES = { track: "capture", identify: "identify", group: "group", page: "page", screen: "screen", alias: "alias" };

// PostHog's standard properties from the context.
const PROPERTIES = [
  ["$os", "context.os.name"],
  ["$current_url", "context.page.url"],
  ["$pathname", "context.page.path"],
  ["$screen_height", "context.screen.height"],
  ["$screen_width", "context.screen.width"],
  ["$lib", "context.library.name"],
  ["$lib_version", "context.library.version"],
  ["$time", "timestamp", false, true],
  ["$device_id", "context.device.id"],
  ["$ip", ["context.ip", "request_ip"]],
  ["$timestamp", "timestamp", false, true],
  ["$anon_distinct_id", "anonymousId"],
  ["distinct_id", ["userId", "anonymousId"]],
  ["$screen_density", "context.screen.density"],
  ["$device_manufacturer", "context.device.manufacturer"],
  ["$os_version", "context.os.version"],
  ["$timezone", "context.timezone"],
  ["$locale", "context.locale"],
  ["$useragent", "context.userAgent"],
  ["$app_version", "context.app.version"],
  ["$device_name", "context.device.name"],
  ["$network_carrier", "context.network.carrier"],
  ["$app_name", "context.app.name"],
  ["$device_model", "context.device.model"],
  ["$app_namespace", "context.app.namespace"],
  ["$app_build", "context.app.build"],
  ["$viewport_height", "properties.viewport_height"],
  ["$viewport_width", "properties.viewport_width"],
  ["utm_source", "context.campaign.source"],
  ["utm_medium", "context.campaign.medium"],
  ["utm_campaign", "context.campaign.name"],
  ["utm_content", "context.campaign.content"],
  ["utm_term", "context.campaign.term"],
  ["$performance_page_loaded", "context.page.loaded"],
];

// ---------- user agent (the names ua-parser-js 1.x gives) ----------

const BROWSERS = [
  [/\bopr\/([\w.]+)/i, "Opera"],
  [/\bedg(?:e|ios|a)?\/([\w.]+)/i, "Edge"],
  [/samsungbrowser\/([\w.]+)/i, "Samsung Internet"],
  [/yabrowser\/([\w.]+)/i, "Yandex"],
  [/headlesschrome(?:\/([\w.]+)| )/i, "Chrome Headless"],
  [/ wv\).+chrome\/([\w.]+)/i, "Chrome WebView"],
  [/\bchromium\/([\w.]+)/i, "Chromium"],
  [/(?:chrome|crios)\/v?([\w.]+)/i, "Chrome"],
  [/fxios\/([\w.-]+)/i, "Firefox"],
  [/firefox\/([\w.]+)/i, "Firefox"],
  [/version\/([\w.,]+) .*mobile\/\w+ safari/i, "Mobile Safari"],
  [/version\/([\w.,]+) .*mobile ?safari/i, "Mobile Safari"],
  [/version\/([\w.,]+) .*safari/i, "Safari"],
  [/(?:ms|\()ie ([\w.]+)/i, "IE"],
  [/trident.+rv[: ]([\w.]{1,9})\b.+like gecko/i, "IE"],
];

const SYSTEMS = [
  [/windows (?:phone|mobile)/i, "Windows Phone"],
  [/windows nt|win(?:dows)? ?(?:9x|95|98|me|ce)/i, "Windows"],
  [/ip[honead]{2,4}\b(?:.*os [\w]+ like mac|; opera)/i, "iOS"],
  [/cfnetwork\/.+darwin/i, "iOS"],
  [/mac os x/i, "Mac OS"],
  [/android/i, "Android"],
  [/\bcros /i, "Chromium OS"],
  [/ubuntu/i, "Ubuntu"],
  [/linux/i, "Linux"],
];

function parseUserAgent(ua) {
  const out = { browser: undefined, version: undefined, os: undefined };
  for (const [re, name] of BROWSERS) {
    const m = re.exec(ua);
    if (m) {
      out.browser = name;
      out.version = m[1];
      break;
    }
  }
  for (const [re, name] of SYSTEMS) {
    if (re.test(ua)) {
      out.os = name;
      break;
    }
  }
  return out;
}

// The host of an absolute URL as WHATWG URL reports it (port kept unless the scheme's
// default); null when `url` is not an absolute URL.
const DEFAULT_PORTS = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443", "ftp:": "21" };
function hostOf(url) {
  if (typeof url !== "string") return null;
  const m = /^\s*([a-z][a-z\d+\-.]*:)(\/\/)?([^/?#]*)/i.exec(url);
  if (!m) return null;
  const scheme = m[1].toLowerCase();
  if (!m[2]) return DEFAULT_PORTS[scheme] ? null : "";
  const authority = m[3].replace(/^.*@/, "");
  const hp = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(authority);
  if (!hp) return null;
  const host = hp[1].toLowerCase();
  if (DEFAULT_PORTS[scheme] && host === "") return null;
  const port = hp[2] && hp[2] !== DEFAULT_PORTS[scheme] ? `:${Number(hp[2])}` : "";
  return `${host}${port}`;
}

// ---------- mapping ----------

function standardProperties(event, type) {
  let data = construct(event, PROPERTIES.map(([dest, source, req, generic]) => [dest, source, req, generic]));
  const ua = event.context?.userAgent;
  if (event.channel === "web" && ua) {
    const parsed = parseUserAgent(String(ua));
    if (parsed.os !== undefined) data.$os = parsed.os;
    data.$browser = parsed.browser;
    data.$browser_version = parsed.version;
  }
  if (type === "screen") data.$screen_name = event.event;
  const host = hostOf(data.$current_url);
  if (host !== null) data.$host = host;
  const traits = event.context?.traits;
  if (type !== "identify" && traits) data = { $set: traits, ...data };
  return dropNulls(data);
}

function item(event, type, config) {
  const mapping = type === "group" ? (config.useV2Group ? MAPPINGS.groupV2 : MAPPINGS.groupV1) : MAPPINGS[type];
  const payload = construct(event, mapping);
  if (!payload.timestamp && isSet(payload.properties?.timestamp)) payload.timestamp = payload.properties.timestamp;
  payload.properties = { ...standardProperties(event, type), ...payload.properties };
  if (type === "group") {
    if (config.useV2Group && payload.properties.$group_set) delete payload.properties.$group_set.groupType;
    const groupType = payload.properties.$group_type;
    const groupKey = payload.properties.$group_key;
    if (groupType && groupKey) payload.properties.$groups = { [groupType]: groupKey };
  }
  if (isSet(payload.distinct_id)) payload.distinct_id = String(payload.distinct_id);
  if (isSet(payload.properties.distinct_id)) payload.properties.distinct_id = String(payload.properties.distinct_id);
  if (type !== "track") payload.event = EVENT_NAMES[type];
  return payload;
}

function endpointOf(config) {
  const origin = baseUrl(config.apiBaseUrl, baseUrl(config.yourInstance, DEFAULT_ORIGIN));
  return `${origin}/batch`;
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.teamApiKey) throw new DestinationError("teamApiKey (the PostHog project API key) is required", 400);
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  if (!API_TYPES[type]) throw new UnsupportedEventError(`Event type ${event.type} is not supported`);
  const payload = item(event, type, config);
  const size = utf8Length(JSON.stringify(payload));
  if (size > MAX_EVENT_BYTES) {
    throw new DestinationError(
      `Event size (${size} bytes) exceeds PostHog's 1 MB limit. PostHog will reject this event with "maximum event size exceeded". Please reduce the size of the event properties to stay within the limit.`,
      400,
    );
  }
  return {
    method: "POST",
    endpoint: endpointOf(config),
    headers: { "Content-Type": "application/json" },
    params: {},
    body: { JSON: { ...payload, api_key: config.teamApiKey, type: API_TYPES[type] } },
  };
}

// Events for the same endpoint and project key go into one /batch body.
export function batch(requests) {
  const groups = new Map();
  const out = [];
  const flush = (g) => {
    if (g.items.length === 0) return;
    out.push({
      request: {
        method: "POST",
        endpoint: g.endpoint,
        headers: { "Content-Type": "application/json" },
        params: {},
        body: { JSON: { api_key: g.apiKey, batch: g.items } },
      },
      events: g.events,
    });
    g.items = [];
    g.events = [];
    g.bytes = 0;
  };
  requests.forEach((r, i) => {
    const json = r.body?.JSON;
    if (!json || typeof json !== "object" || Array.isArray(json) || !json.api_key) {
      out.push({ request: r, events: [i] });
      return;
    }
    const { api_key: apiKey, ...rest } = json;
    const key = `${r.endpoint}\u0000${apiKey}`;
    let g = groups.get(key);
    if (!g) {
      g = { endpoint: r.endpoint, apiKey, items: [], events: [], bytes: utf8Length(JSON.stringify({ api_key: apiKey, batch: [] })) };
      groups.set(key, g);
    }
    const size = utf8Length(JSON.stringify(rest)) + 1;
    if (g.items.length > 0 && g.bytes + size > MAX_BATCH_BODY_BYTES) flush(g);
    if (g.items.length === 0) g.bytes = utf8Length(JSON.stringify({ api_key: apiKey, batch: [] }));
    g.items.push(rest);
    g.events.push(i);
    g.bytes += size;
  });
  for (const g of groups.values()) flush(g);
  return out;
}

// PostHog accepts or refuses a /batch body as a whole ({"status": 1} on success): every
// event goes as the HTTP status says.
export function batchResponse(response, requests) {
  return requests.map(() => null);
}
