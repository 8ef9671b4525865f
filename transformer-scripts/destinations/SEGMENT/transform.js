// Segment's HTTP Tracking API (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/),
// or any service that speaks it (another Keel, RudderStack's data plane, Jitsu…): every
// event goes as one message of POST {origin}/v1/batch {batch: [message]}.
// Auth: HTTP Basic with the source write key as user name and an empty password.
// Config: writeKey (RudderStack's key; required); Keel extensions: region ("US" default →
// https://api.segment.io, "EU" → https://events.eu1.segmentapis.com) and apiBaseUrl
// (replaces the origin; point it at another Keel or a proxy).
// Mapping: the message keeps the Segment spec fields of the event: type, userId (userId,
// traits.userId/id, context.traits.userId/id), anonymousId (at least one of the two is
// required), messageId, timestamp (timestamp, else originalTimestamp), context,
// integrations, and per type event (track), name / category (page, screen), groupId
// (group), previousId (alias), properties (when present), traits (traits, else
// context.traits, without anonymousId — as RudderStack sends them on every type).
// Types other than identify/track/page/screen/group/alias are skipped.
// Limits (Segment's): a message over 32 KB is refused (400); batch() merges messages bound
// for the same endpoint and write key into /v1/batch requests of at most 500 KB (or the
// lower maxBatchBytes of the destination's config).
// batchResponse(): Segment answers a whole batch ({"success": true}); the HTTP status
// decides for every event.
// Departures from RudderStack: RudderStack forwards only anonymousId, type, userId, event,
// traits, properties and a misspelt `timeStamp` (which Segment ignores); Keel forwards the
// whole message as Segment's spec defines it (messageId, timestamp, context, integrations,
// name, category, groupId, previousId) so that groups, aliases and page names reach the
// other side and Segment deduplicates by messageId. RudderStack falls back to the
// anonymousId for userId; Keel sends an anonymous event with anonymousId only (a userId
// would turn the anonymous visitor into an identified user). RudderStack sends every event
// alone; Keel batches.
import { DestinationError, UnsupportedEventError, baseUrl, base64, isSet } from "keel";

export const maxBatchSize = 500;
export const maxBatchBytes = 500 * 1024;

const ORIGINS = { US: "https://api.segment.io", EU: "https://events.eu1.segmentapis.com" };
const MAX_MESSAGE_BYTES = 32 * 1024;
const MAX_BATCH_BYTES = 500 * 1024;
const TYPES = ["identify", "track", "page", "screen", "group", "alias"];

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v || v === 0 || v === false) return v;
  }
  return undefined;
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

function endpointOf(config) {
  const region = String(config.region ?? "US").toUpperCase();
  const origin = ORIGINS[region];
  if (!origin) throw new DestinationError(`region ${JSON.stringify(config.region)} is not one of US, EU`, 400);
  return `${baseUrl(config.apiBaseUrl, origin)}/v1/batch`;
}

function message(event, type) {
  const userId = first(event, ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"]);
  const anonymousId = event.anonymousId || undefined;
  if (!isSet(userId) && !isSet(anonymousId)) {
    throw new DestinationError("userId or anonymousId is required", 400);
  }
  let traits = first(event, ["traits", "context.traits"]);
  if (traits && typeof traits === "object" && !Array.isArray(traits) && "anonymousId" in traits) {
    traits = { ...traits };
    delete traits.anonymousId;
  }
  const out = {
    anonymousId,
    type,
    userId,
    messageId: event.messageId,
    timestamp: event.timestamp ?? event.originalTimestamp,
    event: event.event || undefined,
    name: type === "page" || type === "screen" ? event.name : undefined,
    category: type === "page" ? event.category : undefined,
    groupId: type === "group" ? first(event, ["groupId", "traits.groupId"]) : undefined,
    previousId: type === "alias" ? event.previousId : undefined,
    traits,
    properties: event.properties || undefined,
    context: event.context,
    integrations: event.integrations,
  };
  if (type === "track" && !out.event) throw new DestinationError("event (the track event name) is required", 400);
  if (type === "group" && !isSet(out.groupId)) throw new DestinationError("groupId is required for group", 400);
  if (type === "alias" && !isSet(out.previousId)) throw new DestinationError("previousId is required for alias", 400);
  const clean = {};
  for (const [k, v] of Object.entries(out)) if (isSet(v)) clean[k] = v;
  return clean;
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.writeKey) throw new DestinationError("writeKey (the Segment source write key) is required", 400);
  const type = String(event.type ?? "").toLowerCase();
  if (!TYPES.includes(type)) {
    throw new UnsupportedEventError(`Event type ${JSON.stringify(event.type)} is not part of Segment's spec`);
  }
  const msg = message(event, type);
  const size = utf8Length(JSON.stringify(msg));
  if (size > MAX_MESSAGE_BYTES) {
    throw new DestinationError(`message is ${size} bytes; Segment takes at most 32 KB per call`, 400);
  }
  return {
    method: "POST",
    endpoint: endpointOf(config),
    headers: {
      "Content-Type": "application/json",
      Authorization: `Basic ${base64(`${config.writeKey}:`)}`,
    },
    params: {},
    body: { JSON: { batch: [msg] } },
  };
}

// Messages for the same endpoint and write key go into /v1/batch bodies of ≤ 500 KB (or
// the destination's lower maxBatchBytes).
export function batch(requests, destination) {
  const lowered = Number(destination?.Config?.maxBatchBytes);
  const limit = lowered > 0 ? Math.min(lowered, MAX_BATCH_BYTES) : MAX_BATCH_BYTES;
  const out = [];
  const groups = new Map();
  const empty = utf8Length(JSON.stringify({ batch: [] }));
  const flush = (g) => {
    if (g.items.length === 0) return;
    out.push({
      request: { ...g.r, params: {}, body: { JSON: { batch: g.items } } },
      events: g.events,
    });
    g.items = [];
    g.events = [];
    g.bytes = empty;
  };
  requests.forEach((r, i) => {
    const list = r.body?.JSON?.batch;
    if (!Array.isArray(list)) {
      out.push({ request: r, events: [i] });
      return;
    }
    const key = `${r.endpoint}\u0000${r.headers?.Authorization ?? ""}`;
    if (!groups.has(key)) groups.set(key, { r, items: [], events: [], bytes: empty });
    const g = groups.get(key);
    const size = list.reduce((n, m) => n + utf8Length(JSON.stringify(m)) + 1, 0);
    if (g.items.length > 0 && g.bytes + size > limit) flush(g);
    g.items.push(...list);
    g.events.push(i);
    g.bytes += size;
  });
  for (const g of groups.values()) flush(g);
  return out;
}

// Segment accepts or refuses a batch as a whole.
export function batchResponse(response, requests) {
  return requests.map(() => null);
}
