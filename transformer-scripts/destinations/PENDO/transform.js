// Pendo, server side, from Pendo's public API documentation (RudderStack's PENDO is a
// device-mode destination with no cloud transformer, so nothing here follows RudderStack's
// code; the config keys below are Keel's).
// Endpoints (https://app.pendo.io; region US1 https://us1.app.pendo.io, EU
// https://app.eu.pendo.io, JP https://app.jpn.pendo.io):
//   POST /data/track                               a Track Event
//     (https://support.pendo.io/hc/en-us/articles/360032294291): {type: "track", event,
//     visitorId, accountId, timestamp (ms), properties, context: {ip, userAgent, url, title}},
//     header x-pendo-integration-key: the app's Track Event shared secret.
//   POST /api/v1/metadata/visitor/custom/value     custom visitor metadata
//   POST /api/v1/metadata/account/custom/value     custom account metadata
//     body [{visitorId | accountId, values: {field: value}}], header
//     x-pendo-integration-key: the subscription's integration key (write access);
//     ?create=true also creates visitors/accounts Pendo has not seen yet.
// Config: trackEventSecret (Track Event shared secret; needed for track), integrationKey
// (needed for identify and group), region ("US" default | "US1" | "EU" | "JP"),
// createMissingRecords (send ?create=true), visitorMetadataMapping / accountMetadataMapping
// ([{from: trait path, to: Pendo custom field}]; empty: every top-level trait whose value
// is a string, number or boolean, under its own name — Pendo custom fields are scalars
// and must exist in Settings > Data Mappings), apiBaseUrl (replaces the regional origin).
// Mapping:
//   track → /data/track: visitorId = userId (else context.traits.userId/id, else
//     anonymousId; required), accountId = context.groupId, properties.accountId or
//     context.traits.accountId (left out when none), timestamp = the event time in ms (now
//     when the event has none), properties = event properties, context = {ip (context.ip
//     or request_ip), userAgent, url (context.page.url), title (context.page.title)}.
//   identify → visitor metadata for visitorId (as above) with the mapped traits.
//   group → account metadata for accountId = groupId (required) with the mapped traits.
//   page, screen, alias → skipped (the Pendo agent records pages itself; Pendo has no
//     server-side page or alias call).
// Batching: batch() merges metadata updates of the same kind into one array (≤ 100
// records per request); tracks go one per request (no bulk track endpoint).
// batchResponse(): Pendo's metadata answer lists records it could not find in `missing`
// (when createMissingRecords is off); those events are dead-lettered with that reason.
import { DestinationError, UnsupportedEventError, baseUrl, eventTimeMs } from "keel";

export const maxBatchSize = 100;

const ORIGINS = {
  US: "https://app.pendo.io",
  US1: "https://us1.app.pendo.io",
  EU: "https://app.eu.pendo.io",
  JP: "https://app.jpn.pendo.io",
};
const METADATA_MAX = 100;

function get(obj, path) {
  let v = obj;
  for (const key of String(path).split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v !== undefined && v !== null && v !== "") return v;
  }
  return undefined;
}

function originOf(config) {
  const region = String(config.region ?? "US").toUpperCase();
  const origin = ORIGINS[region === "JPN" ? "JP" : region];
  if (!origin) throw new DestinationError(`region ${JSON.stringify(config.region)} is not one of US, US1, EU, JP`, 400);
  return baseUrl(config.apiBaseUrl, origin);
}

function visitorIdOf(event) {
  const id = first(event, ["userId", "context.traits.userId", "context.traits.id", "anonymousId"]);
  if (id === undefined) throw new DestinationError("userId or anonymousId is required (the Pendo visitorId)", 400);
  return String(id);
}

const isScalar = (v) => typeof v === "string" || typeof v === "number" || typeof v === "boolean";

function metadataValues(traits, mapping) {
  const values = {};
  if (Array.isArray(mapping) && mapping.some((m) => m?.from && m?.to)) {
    for (const m of mapping) {
      if (!m?.from || !m?.to) continue;
      const v = get(traits, m.from);
      if (v !== undefined && v !== null) values[m.to] = v;
    }
    return values;
  }
  for (const [k, v] of Object.entries(traits ?? {})) if (isScalar(v)) values[k] = v;
  return values;
}

function metadataRequest(config, kind, record) {
  if (!config.integrationKey) {
    throw new DestinationError("integrationKey (the Pendo integration key) is required for identify and group", 400);
  }
  return {
    method: "POST",
    endpoint: `${originOf(config)}/api/v1/metadata/${kind}/custom/value`,
    headers: { "Content-Type": "application/json", "x-pendo-integration-key": config.integrationKey },
    params: config.createMissingRecords ? { create: "true" } : {},
    body: { JSON_ARRAY: [record] },
  };
}

function track(event, config) {
  if (!config.trackEventSecret) {
    throw new DestinationError("trackEventSecret (the Pendo Track Event shared secret) is required for track", 400);
  }
  if (!event.event) throw new DestinationError("event (the track event name) is required", 400);
  const body = {
    type: "track",
    event: String(event.event),
    visitorId: visitorIdOf(event),
  };
  const accountId = first(event, ["context.groupId", "properties.accountId", "context.traits.accountId"]);
  if (accountId !== undefined) body.accountId = String(accountId);
  body.timestamp = eventTimeMs(event) ?? Date.now();
  body.properties = event.properties && typeof event.properties === "object" ? event.properties : {};
  const context = {};
  const ip = first(event, ["context.ip", "request_ip"]);
  if (ip !== undefined) context.ip = ip;
  const ua = first(event, ["context.userAgent"]);
  if (ua !== undefined) context.userAgent = ua;
  const url = first(event, ["context.page.url"]);
  if (url !== undefined) context.url = url;
  const title = first(event, ["context.page.title"]);
  if (title !== undefined) context.title = title;
  body.context = context;
  return {
    method: "POST",
    endpoint: `${originOf(config)}/data/track`,
    headers: { "Content-Type": "application/json", "x-pendo-integration-key": config.trackEventSecret },
    params: {},
    body: { JSON: body },
  };
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  const type = String(event.type ?? "").toLowerCase();
  switch (type) {
    case "track":
      return track(event, config);
    case "identify": {
      const traits = event.traits ?? event.context?.traits ?? {};
      return metadataRequest(config, "visitor", {
        visitorId: visitorIdOf(event),
        values: metadataValues(traits, config.visitorMetadataMapping),
      });
    }
    case "group": {
      const groupId = first(event, ["groupId", "traits.groupId"]);
      if (groupId === undefined) throw new DestinationError("groupId is required (the Pendo accountId)", 400);
      return metadataRequest(config, "account", {
        accountId: String(groupId),
        values: metadataValues(event.traits ?? {}, config.accountMetadataMapping),
      });
    }
    case "page":
    case "screen":
      throw new UnsupportedEventError(`Event type ${type} is not supported: the Pendo agent records page views itself`);
    case "alias":
      throw new UnsupportedEventError("Event type alias is not supported: Pendo has no server-side alias call");
    default:
      throw new UnsupportedEventError(`Event type ${JSON.stringify(event.type)} is not supported by Pendo`);
  }
}

// Metadata updates of the same endpoint, key and params become one array.
export function batch(requests) {
  const out = [];
  const groups = new Map();
  requests.forEach((r, i) => {
    const list = r.body?.JSON_ARRAY;
    if (!Array.isArray(list) || !/\/api\/v1\/metadata\//.test(String(r.endpoint))) {
      out.push({ request: r, events: [i] });
      return;
    }
    const key = JSON.stringify([r.endpoint, r.headers, r.params]);
    if (!groups.has(key)) groups.set(key, { r, chunks: [[]] });
    const g = groups.get(key);
    let chunk = g.chunks[g.chunks.length - 1];
    if (chunk.length >= METADATA_MAX) {
      chunk = [];
      g.chunks.push(chunk);
    }
    chunk.push({ records: list, i });
  });
  for (const g of groups.values()) {
    for (const chunk of g.chunks) {
      out.push({
        request: { ...g.r, body: { JSON_ARRAY: chunk.flatMap((c) => c.records) } },
        events: chunk.map((c) => c.i),
      });
    }
  }
  return out;
}

// Records Pendo lists as `missing` (not found, not created) are dead-lettered.
export function batchResponse(response, requests) {
  const body = response.body;
  if (response.status < 200 || response.status >= 300 || !body || typeof body !== "object") {
    return requests.map(() => null);
  }
  const missing = new Set((Array.isArray(body.missing) ? body.missing : []).map(String));
  if (missing.size === 0) return requests.map(() => null);
  return requests.map((r) => {
    const records = Array.isArray(r.body?.JSON_ARRAY) ? r.body.JSON_ARRAY : [];
    const ids = records.map((rec) => String(rec.visitorId ?? rec.accountId ?? ""));
    const gone = ids.filter((id) => missing.has(id));
    if (gone.length === 0) return null;
    const kind = records[0]?.visitorId !== undefined ? "visitor" : "account";
    return {
      status: 400,
      error: `Pendo has no ${kind} ${gone.join(", ")} (not created: set createMissingRecords to create it)`,
    };
  });
}
