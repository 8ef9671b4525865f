// Iterable through its REST API (https://api.iterable.com/api/docs), as RudderStack's
// ITERABLE destination maps events.
// Origin: https://api.iterable.com (dataCenter "USDC", the default) or
// https://api.eu.iterable.com ("EUDC"). Auth: header `api_key: <apiKey>` (the register
// device/browser token calls use registerDeviceOrBrowserApiKey).
// Config (RudderStack's keys): apiKey, dataCenter, preferUserId (default true),
// mergeNestedObjects (default true), trackAllPages, trackCategorisedPages, trackNamedPages,
// mapToSingleEvent, registerDeviceOrBrowserApiKey. Keel extension: apiBaseUrl replaces the
// origin.
// Mapping:
//   identify → POST /api/users/update {email, userId, dataFields: traits, preferUserId,
//     mergeNestedObjects}; with context.device.token (or context.os.token) and
//     registerDeviceOrBrowserApiKey also /api/users/registerDeviceToken (APNS for Apple
//     devices, else GCM) or /api/users/registerBrowserToken.
//   track → POST /api/events/track {email, userId, eventName, id, createdAt (ms),
//     dataFields: properties, campaignId, templateId}; "Order Completed" →
//     /api/commerce/trackPurchase (items from products); "Product Added" / "Product Removed"
//     → /api/commerce/updateCart.
//   page / screen → /api/events/track "<name> page|screen" (or "Loaded a Page|Screen" with
//     mapToSingleEvent), sent only when trackAllPages, or trackCategorisedPages with a
//     category, or trackNamedPages with a name.
//   alias → POST /api/users/updateEmail {currentEmail: previousId, newEmail: userId}.
//   group → skipped (not supported).
// Batching: batch() turns users/update requests into /api/users/bulkUpdate {users} and
// events/track requests into /api/events/trackBulk {events} (at most 1000 and 4 MB per
// request, RudderStack's limits); the other endpoints go one per request.
// batchResponse(): on a 2xx bulk answer, an event whose userId / email appears in
// failedUpdates.* / invalidUserIds / invalidEmails, or whose eventName is in
// disallowedEventNames, is dead-lettered (as RudderStack's v1 network handler does).
// Departures from RudderStack: rETL catalog updates (context.mappedToDestination with a
// non-"users" object) are not implemented; a missing apiKey is refused (400).
import { DestinationError, UnsupportedEventError, baseUrl, get } from "keel";

export const maxBatchSize = 1000;
export const maxBatchBytes = 4000000;

const ORIGINS = { USDC: "https://api.iterable.com", EUDC: "https://api.eu.iterable.com" };

const USER_ID = ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id", "anonymousId"];
const CREATED_AT = ["traits.createdAt", "context.traits.createdAt", "timestamp", "originalTimestamp"];

const M = (destKey, sourceKeys, extra = {}) => ({ destKey, sourceKeys, ...extra });
const IDENTIFY = [
  M("email", ["traits.email", "context.traits.email"]),
  M("dataFields", ["traits", "context.traits"]),
  M("userId", USER_ID),
];
const PAGE = [
  M("email", ["properties.email", "context.traits.email"]),
  M("dataFields", "properties"),
  M("userId", USER_ID),
  M("eventName", ["name", "properties.name"]),
  M("createdAt", CREATED_AT),
  M("campaignId", "properties.campaignId"),
  M("templateId", "properties.templateId"),
];
const TRACK = [
  M("email", ["properties.email", "context.traits.email"]),
  M("dataFields", "properties"),
  M("userId", USER_ID),
  M("id", "properties.event_id", { asString: true }),
  M("eventName", "event"),
  M("createdAt", CREATED_AT),
  M("campaignId", "properties.campaignId"),
  M("templateId", "properties.templateId"),
];
const PURCHASE = [
  M("dataFields", "properties"),
  M("id", ["properties.order_id", "properties.orderId", "properties.event_id"], { asString: true }),
  M("createdAt", CREATED_AT),
  M("campaignId", "properties.campaignId"),
  M("templateId", "properties.templateId"),
  M("total", "properties.total", { required: true }),
];
const PRODUCT = [
  M("id", "product_id", { required: true }),
  M("sku", "sku"),
  M("name", "name", { required: true }),
  M("description", "description"),
  M("categories", "category"),
  M("price", "price", { required: true }),
  M("quantity", "quantity", { required: true }),
  M("imageUrl", "image_url"),
  M("url", "url"),
  M("dataFields", "properties"),
];
const ALIAS = [M("currentEmail", "previousId", { required: true }), M("newEmail", "userId", { required: true })];
const BROWSER_TOKEN = [
  M("browserToken", "context.os.token", { required: true }),
  M("email", ["traits.email", "context.traits.email"]),
  M("userId", USER_ID),
];
const DEVICE_TOKEN = [M("email", ["traits.email", "context.traits.email"]), M("userId", USER_ID)];
const DEVICE = [
  M("token", "context.device.token", { required: true }),
  M("applicationName", "context.device.name"),
  M("dataFields", "properties"),
];

// ---------- helpers ----------

const usable = (v) => v || v === 0 || v === false;

// RudderStack's constructPayload for the mappings above.
function construct(source, mapping) {
  const out = {};
  for (const m of mapping) {
    let value;
    if (Array.isArray(m.sourceKeys)) {
      value = null;
      for (const k of m.sourceKeys) {
        const v = get(source, k);
        if (usable(v)) {
          value = v;
          break;
        }
      }
    } else {
      value = get(source, m.sourceKeys);
    }
    if (m.asString && value !== undefined && value !== null) value = String(value);
    if (usable(value)) out[m.destKey] = value;
    else if (m.required) throw new DestinationError(`Missing required value from ${JSON.stringify(m.sourceKeys)}`, 400);
  }
  return out;
}

function dropNulls(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== null) out[k] = v;
  return out;
}

function requireUser(payload) {
  if (!payload.email && !payload.userId) {
    throw new DestinationError("userId or email is mandatory for this request", 400);
  }
}

const preferUserId = (config) => (config.preferUserId !== undefined ? config.preferUserId : true);
const mergeNested = (config) => (config.mergeNestedObjects !== undefined ? config.mergeNestedObjects : true);

function origin(config) {
  return baseUrl(config.apiBaseUrl, ORIGINS[config.dataCenter] || ORIGINS.USDC);
}

function request(config, path, body, apiKey = config.apiKey) {
  return {
    method: "POST",
    endpoint: `${origin(config)}/api/${path}`,
    headers: { "Content-Type": "application/json", api_key: apiKey },
    params: {},
    body: { JSON: dropNulls(body) },
  };
}

const toInt = (v) => (v ? Number.parseInt(v, 10) : undefined);
const toMs = (v) => new Date(v).getTime();

// ---------- payloads ----------

function identifyPayload(event, config) {
  const p = construct(event, IDENTIFY);
  p.preferUserId = preferUserId(config);
  p.mergeNestedObjects = mergeNested(config);
  requireUser(p);
  return p;
}

function pageOrScreen(event, config, type) {
  const props = event.properties ?? {};
  const allowed =
    config.trackAllPages ||
    (config.trackCategorisedPages && (props.category || event.category)) ||
    (config.trackNamedPages && (props.name || event.name));
  if (!allowed) throw new DestinationError(`Invalid ${type} call`, 400);
  const p = construct(event, PAGE);
  requireUser(p);
  p.createdAt = toMs(p.createdAt);
  p.campaignId = toInt(p.campaignId);
  p.templateId = toInt(p.templateId);
  p.eventName =
    config.mapToSingleEvent === true
      ? `Loaded a ${type.charAt(0).toUpperCase()}${type.slice(1)}`
      : `${p.eventName} ${type}`;
  return p;
}

function items(event) {
  const list = Array.isArray(event.properties?.products) ? event.properties.products : [event.properties];
  return list.map((item) => {
    const p = construct(item, PRODUCT);
    if (p.categories && typeof p.categories === "string") p.categories = p.categories.split(",");
    p.price = Number.parseFloat(p.price);
    p.quantity = Number.parseInt(p.quantity, 10);
    return p;
  });
}

function userOf(event, config) {
  const user = {
    ...construct(event, IDENTIFY),
    preferUserId: preferUserId(config),
    mergeNestedObjects: mergeNested(config),
  };
  requireUser(user);
  return user;
}

function track(event, config) {
  const name = typeof event.event === "string" ? event.event.toLowerCase() : event.event;
  if (name === "order completed") {
    const p = { ...construct(event, PURCHASE), user: userOf(event, config) };
    p.total = Number.parseFloat(p.total);
    p.items = items(event);
    p.createdAt = toMs(p.createdAt);
    p.id = p.id ? p.id.toString() : undefined;
    p.campaignId = toInt(p.campaignId);
    p.templateId = toInt(p.templateId);
    return request(config, "commerce/trackPurchase", p);
  }
  if (name === "product added" || name === "product removed") {
    const p = { user: userOf(event, config) };
    p.items = items(event);
    return request(config, "commerce/updateCart", p);
  }
  const p = construct(event, TRACK);
  requireUser(p);
  p.createdAt = toMs(p.createdAt);
  p.campaignId = toInt(p.campaignId);
  p.templateId = toInt(p.templateId);
  return request(config, "events/track", p);
}

function isApple(platform) {
  return typeof platform === "string" && ["ios", "watchos", "ipados", "tvos"].includes(platform.toLowerCase());
}

function tokenRequest(event, config) {
  const key = config.registerDeviceOrBrowserApiKey;
  if (event.context?.device?.token) {
    const p = {
      ...construct(event, DEVICE_TOKEN),
      preferUserId: preferUserId(config),
      device: { ...construct(event, DEVICE), platform: isApple(event.context?.device?.type) ? "APNS" : "GCM" },
    };
    return request(config, "users/registerDeviceToken", p, key);
  }
  const p = construct(event, BROWSER_TOKEN);
  requireUser(p);
  return request(config, "users/registerBrowserToken", p, key);
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  if (!["identify", "page", "screen", "track", "alias"].includes(type)) {
    throw new UnsupportedEventError(`Message type ${type} not supported`);
  }
  if (!config.apiKey) throw new DestinationError("apiKey is required", 400);
  if (type === "identify") {
    const main = request(config, "users/update", identifyPayload(event, config));
    const ctx = event.context;
    const hasToken = Boolean(ctx && (ctx.device?.token || ctx.os?.token));
    // RudderStack compares the raw type here: only a lower-case "identify" also registers a token.
    if (event.type === "identify" && hasToken && config.registerDeviceOrBrowserApiKey) {
      return [main, tokenRequest(event, config)];
    }
    return main;
  }
  if (type === "page" || type === "screen") return request(config, "events/track", pageOrScreen(event, config, type));
  if (type === "track") return track(event, config);
  return request(config, "users/updateEmail", construct(event, ALIAS));
}

// ---------- batching ----------

function jsonSize(v) {
  // UTF-8 byte length of the JSON text.
  const s = JSON.stringify(v) ?? "";
  let n = 0;
  for (let i = 0; i < s.length; i += 1) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 4;
      i += 1;
    } else n += 3;
  }
  return n;
}

export function batch(requests) {
  // Bulk groups by endpoint and API key (a workspace may hold several Iterable projects).
  const groups = new Map();
  const out = [];
  const singles = [];
  requests.forEach((r, i) => {
    const e = String(r.endpoint);
    const kind = e.endsWith("/api/users/update") ? "users" : e.endsWith("/api/events/track") ? "events" : null;
    if (!kind) {
      singles.push(i);
      return;
    }
    const key = `${kind} ${e} ${r.headers?.api_key}`;
    if (!groups.has(key)) groups.set(key, { kind, indices: [] });
    groups.get(key).indices.push(i);
  });
  const bulk = (indices, path, key) => {
    let chunk = [];
    let size = 0;
    const flush = () => {
      if (chunk.length === 0) return;
      const firstReq = requests[chunk[0]];
      const endpoint = String(firstReq.endpoint).replace(/\/api\/[^/]+\/[^/]+$/, `/api/${path}`);
      out.push({
        request: {
          method: "POST",
          endpoint,
          headers: firstReq.headers,
          params: {},
          body: { JSON: { [key]: chunk.map((i) => requests[i].body.JSON) } },
        },
        events: chunk,
      });
      chunk = [];
      size = 0;
    };
    for (const i of indices) {
      const n = jsonSize(requests[i].body?.JSON);
      if (chunk.length >= maxBatchSize || (chunk.length > 0 && size + n > maxBatchBytes)) flush();
      chunk.push(i);
      size += n;
    }
    flush();
  };
  for (const g of groups.values()) if (g.kind === "users") bulk(g.indices, "users/bulkUpdate", "users");
  for (const g of groups.values()) if (g.kind === "events") bulk(g.indices, "events/trackBulk", "events");
  for (const i of singles) out.push({ request: requests[i], events: [i] });
  return out;
}

const EMAIL_PATHS = [
  "invalidEmails", "failedUpdates.invalidEmails", "failedUpdates.notFoundEmails",
  "failedUpdates.forgottenEmails", "failedUpdates.conflictEmails", "failedUpdates.invalidDataEmails",
];
const USER_ID_PATHS = [
  "invalidUserIds", "failedUpdates.invalidUserIds", "failedUpdates.notFoundUserIds",
  "failedUpdates.forgottenUserIds", "failedUpdates.conflictUserIds", "failedUpdates.invalidDataUserIds",
];

export function batchResponse(response, requests) {
  const ok = response.status >= 200 && response.status < 300;
  const body = response.body;
  const bulk = requests.length > 1 || /\/api\/(users|events)\/(update|track)$/.test(String(requests[0]?.endpoint));
  if (!ok || !bulk || !body || typeof body !== "object" || body.failCount === 0) {
    return requests.map(() => null);
  }
  const index = (paths) => {
    const m = new Map();
    for (const p of paths) {
      const list = p.split(".").reduce((o, k) => o?.[k], body);
      if (Array.isArray(list)) for (const v of list) m.set(v, [...(m.get(v) ?? []), p]);
    }
    return m;
  };
  const emails = index(EMAIL_PATHS);
  const userIds = index(USER_ID_PATHS);
  const disallowed = new Set(Array.isArray(body.disallowedEventNames) ? body.disallowedEventNames : []);
  return requests.map((r) => {
    const item = r.body?.JSON ?? {};
    let error = "";
    if (item.userId && userIds.has(item.userId)) error += `userId error:"${item.userId}" in "${userIds.get(item.userId).join(",")}".`;
    if (item.email && emails.has(item.email)) error += `email error:"${item.email}" in "${emails.get(item.email).join(",")}".`;
    if (item.eventName && disallowed.has(item.eventName)) error += `eventName error:"${item.eventName}" in "disallowedEventNames".`;
    return error ? { status: 400, error } : null;
  });
}
