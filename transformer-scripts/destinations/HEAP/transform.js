// Heap through its server-side APIs (https://developers.heap.io/reference/server-side-apis-overview).
// Endpoints (https://heapanalytics.com, or https://c.eu.heap-api.com with dataResidency "eu"):
//   POST /api/track                    one event {app_id, identity, event, timestamp,
//                                      properties, idempotency_key}; bulk form {app_id,
//                                      events: [...]} (≤ 1000 events)
//   POST /api/add_user_properties      {app_id, identity, properties}; bulk form {app_id,
//                                      users: [{identity, properties}]} (≤ 1000 users)
//   POST /api/add_account_properties   {app_id, account_id, properties}; bulk form {app_id,
//                                      accounts: [{account_id, properties}]} (≤ 1000)
// Auth: none beyond the environment id (`app_id`) in the body.
// Config (RudderStack's keys): appId (required), dataResidency ("us" default | "eu").
// Keel extension: apiBaseUrl replaces the origin (over dataResidency).
// Mapping:
//   identify → add_user_properties: identity = userId, traits.userId/id,
//     context.traits.userId/id, else anonymousId (first non-empty; required); properties =
//     traits (else context.traits; required) flattened ("a.b", "list[0]") without
//     idempotencyKey.
//   track → track: identity as above, event (required), timestamp (timestamp, else
//     originalTimestamp), properties flattened without idempotencyKey, idempotency_key =
//     properties.idempotencyKey.
//   group → add_account_properties: account_id = groupId (required), properties = traits
//     flattened (Keel addition: RudderStack refuses group; Heap links accounts to users
//     through the Account ID user property configured in Heap).
//   page, screen, alias → skipped (Heap captures page views itself; no server-side API).
// Batching: batch() turns tracks into bulk track requests, identifies into bulk
// add_user_properties requests and groups into bulk add_account_properties requests (≤ 1000
// items each, per endpoint and app_id). Heap answers a whole request with one status (no
// per-item results), so no batchResponse.
// Departures from RudderStack: RudderStack sends every event alone (no router batching);
// identity is sent as a string (Heap's documented type); group is handled (above).
import { DestinationError, UnsupportedEventError, baseUrl } from "keel";

export const maxBatchSize = 1000;

const ORIGINS = { us: "https://heapanalytics.com", eu: "https://c.eu.heap-api.com" };
const BULK_MAX = 1000;
const USER_ID = ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id", "anonymousId"];

// Per endpoint path: the bulk body's list key and the members of one item.
const BULK = {
  "/api/track": { list: "events" },
  "/api/add_user_properties": { list: "users" },
  "/api/add_account_properties": { list: "accounts" },
};

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

// RudderStack's flattenJson: nested keys joined with ".", array items as key[i].
function flatten(data) {
  const out = {};
  const walk = (cur, prop) => {
    if (Object(cur) !== cur) {
      if (cur !== undefined) out[prop] = cur;
    } else if (Array.isArray(cur)) {
      cur.forEach((v, i) => walk(v, `${prop}[${i}]`));
      if (cur.length === 0) out[prop] = [];
    } else {
      const keys = Object.keys(cur);
      keys.forEach((k) => walk(cur[k], prop ? `${prop}.${k}` : k));
      if (keys.length === 0 && prop) out[prop] = {};
    }
  };
  if (data !== undefined && data !== null) walk(data, "");
  delete out.idempotencyKey;
  return out;
}

function identityOf(event) {
  for (const p of USER_ID) {
    const v = get(event, p);
    if (v) return String(v);
  }
  throw new DestinationError("userId is required", 400);
}

function originOf(config) {
  const residency = String(config.dataResidency ?? "us").toLowerCase();
  return baseUrl(config.apiBaseUrl, ORIGINS[residency] ?? ORIGINS.us);
}

function request(config, path, body) {
  return {
    method: "POST",
    endpoint: `${originOf(config)}${path}`,
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    params: {},
    body: { JSON: body },
  };
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("message Type is not present. Aborting message.", 400);
  const type = String(event.type).toLowerCase();
  if (!["identify", "track", "group"].includes(type)) {
    throw new UnsupportedEventError(`message type ${event.type} is not supported`);
  }
  if (!config.appId) throw new DestinationError("appId (the Heap environment id) is required", 400);
  if (type === "identify") {
    const traits = event.traits ?? event.context?.traits;
    if (!traits) throw new DestinationError("traits are required", 400);
    return request(config, "/api/add_user_properties", {
      identity: identityOf(event),
      properties: flatten(traits),
      app_id: config.appId,
    });
  }
  if (type === "track") {
    if (!event.event) throw new DestinationError("event is required", 400);
    const body = {
      identity: identityOf(event),
      event: event.event,
      properties: flatten(event.properties),
      app_id: config.appId,
    };
    const timestamp = event.timestamp ?? event.originalTimestamp;
    if (timestamp !== undefined && timestamp !== null) body.timestamp = timestamp;
    const key = event.properties?.idempotencyKey;
    if (key) body.idempotency_key = key;
    return request(config, "/api/track", body);
  }
  const accountId = event.groupId ?? event.traits?.groupId;
  if (accountId === undefined || accountId === null || accountId === "") {
    throw new DestinationError("groupId is required (the Heap account id)", 400);
  }
  return request(config, "/api/add_account_properties", {
    account_id: String(accountId),
    properties: flatten(event.traits ?? {}),
    app_id: config.appId,
  });
}

function pathOf(endpoint) {
  const m = /^[a-z][a-z\d+\-.]*:\/\/[^/]*(\/[^?#]*)/i.exec(String(endpoint));
  return m ? m[1] : "";
}

// One bulk request per endpoint and app_id, ≤ 1000 items each.
export function batch(requests) {
  const out = [];
  const groups = new Map();
  requests.forEach((r, i) => {
    const json = r.body?.JSON;
    const bulk = BULK[pathOf(r.endpoint)];
    if (!bulk || !json || typeof json !== "object" || json[bulk.list]) {
      out.push({ request: r, events: [i] });
      return;
    }
    const { app_id: appId, ...item } = json;
    const key = `${r.endpoint}\u0000${appId}`;
    if (!groups.has(key)) groups.set(key, { r, appId, list: bulk.list, chunks: [[]] });
    const g = groups.get(key);
    let chunk = g.chunks[g.chunks.length - 1];
    if (chunk.length >= BULK_MAX) {
      chunk = [];
      g.chunks.push(chunk);
    }
    chunk.push({ item, i });
  });
  for (const g of groups.values()) {
    for (const chunk of g.chunks) {
      out.push({
        request: {
          method: "POST",
          endpoint: g.r.endpoint,
          headers: g.r.headers,
          params: {},
          body: { JSON: { app_id: g.appId, [g.list]: chunk.map((c) => c.item) } },
        },
        events: chunk.map((c) => c.i),
      });
    }
  }
  return out;
}
