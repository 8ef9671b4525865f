// Google Cloud Pub/Sub through its REST API
// (https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.topics/publish):
//   POST https://pubsub.googleapis.com/v1/projects/{projectId}/topics/{topic}:publish
//        {"messages": [{"data": base64(<the event as JSON>), "attributes": {…}}]}
// Auth: `Authorization: Bearer <OAuth token>` of the service account in `credentials` (its
// JSON key, text or object): a JWT signed RS256 with the key's private_key ({iss:
// client_email, scope: …/auth/pubsub, aud: the key's token_uri (else
// https://oauth2.googleapis.com/token), iat, exp: +1h}, header kid: private_key_id) is
// exchanged there (or at the `tokenUrl` setting) for an access token, cached per key until
// a minute before it expires.
// Config (RudderStack's keys): credentials, projectId (else the key's project_id),
// eventToTopicMap ([{from, to}]: from an event name, a type, or "*"; names compared
// lower-cased; `to` a topic id or a full "projects/…/topics/…" name), eventToAttributesMap
// ([{from, to}]: for the event name / type / "*" the attribute paths to copy), testConfig
// ({endpoint: "host:port"} of a Pub/Sub emulator, reached over http without auth).
// Keel extensions: apiBaseUrl replaces https://pubsub.googleapis.com (with no credentials
// the request goes without Authorization, as to the Pub/Sub emulator, PUBSUB_EMULATOR_HOST
// style); tokenUrl replaces the token endpoint (tests).
// Mapping (all event types; Pub/Sub carries any event):
//   topic: eventToTopicMap[event name] else [type] else ["*"]; none → 400 "No topic set".
//   data: the whole event as JSON (keys sorted, so the bytes are stable), base64.
//   attributes: for each mapped path, the event's value at that path, else the value under
//     properties / traits / context.traits; strings as they are, other values as JSON;
//     named by the path's last segment. Left out when there are none.
// Batching: batch() merges messages for the same topic into one publish (at most 1000
// messages and 10 MB per request, Pub/Sub's limits) and puts a fresh token on each request
// (process() adds one too, for deliveries that do not go through batch()). Pub/Sub accepts
// or refuses a publish as a whole, so there is no batchResponse().
// Departures from RudderStack: RudderStack's server publishes over gRPC with the client
// library; Keel sends the same message (data = the event JSON, the same attributes) through
// the REST API. The JSON keys of `data` are sorted.
import { DestinationError, base64, baseUrl, signJwtRs256 } from "keel";

export const maxBatchSize = 1000;
export const maxBatchBytes = 9 * 1024 * 1024;

const API = "https://pubsub.googleapis.com";
const TOKEN_URL = "https://oauth2.googleapis.com/token";
const SCOPE = "https://www.googleapis.com/auth/pubsub";
const PUBLISH_MAX_MESSAGES = 1000;
const PUBLISH_MAX_BYTES = 10 * 1000 * 1000;

// ---------- helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of String(path).split(".")) {
    if (v === null || v === undefined || typeof v !== "object") return undefined;
    v = v[key];
  }
  return v;
}

const defined = (v) => v !== undefined && v !== null;
const text = (v) => (typeof v === "string" ? v : JSON.stringify(v));

// JSON with object keys sorted (arrays keep their order).
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map((x) => (x === undefined ? "null" : canonical(x))).join(",")}]`;
  if (v && typeof v === "object") {
    const parts = [];
    for (const k of Object.keys(v).sort()) {
      if (v[k] === undefined || typeof v[k] === "function") continue;
      parts.push(`${JSON.stringify(k)}:${canonical(v[k])}`);
    }
    return `{${parts.join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

// {from (lower-cased): to}; later entries win, empty `from`s are skipped.
function topicMap(list) {
  const out = {};
  for (const item of Array.isArray(list) ? list : []) {
    if (typeof item?.from !== "string" || item.from === "") continue;
    out[item.from.toLowerCase()] = item.to;
  }
  return out;
}

// {from (lower-cased): [to, …]}.
function attributesMap(list) {
  const out = {};
  for (const item of Array.isArray(list) ? list : []) {
    if (typeof item?.from !== "string" || item.from === "") continue;
    const key = item.from.toLowerCase();
    (out[key] ??= []).push(item.to);
  }
  return out;
}

function lookup(map, event) {
  return (
    (event.event ? map[String(event.event).toLowerCase()] : undefined) ||
    map[String(event.type).toLowerCase()] ||
    map["*"]
  );
}

function attributeValue(event, path) {
  const direct = get(event, path);
  if (defined(direct)) return text(direct);
  for (const source of ["properties", "traits", "context.traits"]) {
    const obj = get(event, source);
    if (!obj || typeof obj !== "object") continue;
    const v = defined(obj[path]) ? obj[path] : get(obj, path);
    if (defined(v)) return text(v);
  }
  return undefined;
}

function attributesOf(event, config) {
  const keys = lookup(attributesMap(config.eventToAttributesMap), event);
  const out = {};
  for (const path of Array.isArray(keys) ? keys : []) {
    if (typeof path !== "string" || path === "") continue;
    const v = attributeValue(event, path);
    if (v === undefined) continue;
    const parts = path.split(".");
    out[parts[parts.length - 1]] = v;
  }
  return out;
}

// ---------- auth ----------

function credentialsOf(config) {
  const c = config.credentials;
  if (c === undefined || c === null || c === "") return null;
  let key = c;
  if (typeof c === "string") {
    try {
      key = JSON.parse(c);
    } catch {
      throw new DestinationError("credentials must be a Google service account key (JSON)", 400);
    }
  }
  if (!key || typeof key !== "object" || !key.client_email || !key.private_key) {
    throw new DestinationError("credentials must be a Google service account key with client_email and private_key", 400);
  }
  return key;
}

// The API origin and whether requests need a token.
function target(config) {
  const key = credentialsOf(config);
  if (typeof config.apiBaseUrl === "string" && config.apiBaseUrl.trim() !== "") {
    return { origin: baseUrl(config.apiBaseUrl, API), key };
  }
  const emulator = config.testConfig?.endpoint;
  if (typeof emulator === "string" && emulator.trim() !== "") {
    const host = emulator.trim();
    return { origin: baseUrl(/^https?:\/\//i.test(host) ? host : `http://${host}`, API), key };
  }
  if (!key) throw new DestinationError("credentials (a service account key) is required", 400);
  return { origin: API, key };
}

// Tokens per key: {promise, expiresAt}. On globalThis, which outlives one call (a module's
// own variables start afresh with each call into the script); the promise is stored before
// the token request so that events of one call share one request.
const tokens = (globalThis.__keelGooglePubsubTokens ??= new Map());

async function requestToken(config, key, audience, tokenUrl, now) {
  const iat = Math.floor(now / 1000);
  const header = { alg: "RS256", typ: "JWT" };
  if (key.private_key_id) header.kid = key.private_key_id;
  let assertion;
  try {
    assertion = signJwtRs256(
      { iss: key.client_email, scope: SCOPE, aud: audience, iat, exp: iat + 3600 },
      key.private_key,
      header,
    );
  } catch (e) {
    throw new DestinationError(`cannot sign with the service account's private_key: ${e.message}`, 400);
  }
  let res;
  try {
    res = await fetchV2(tokenUrl, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: `grant_type=${encodeURIComponent("urn:ietf:params:oauth:grant-type:jwt-bearer")}&assertion=${encodeURIComponent(assertion)}`,
    });
  } catch (e) {
    throw new DestinationError(`Google token request failed: ${e.message}`, 502);
  }
  const body = res.body && typeof res.body === "object" ? res.body : {};
  if (res.status < 200 || res.status >= 300 || !body.access_token) {
    const reason = body.error_description || body.error || (typeof res.body === "string" ? res.body : JSON.stringify(res.body));
    const status = res.status === 429 || res.status >= 500 || !res.status ? 503 : 400;
    throw new DestinationError(`Google token request answered ${res.status}: ${reason}`, status);
  }
  const lifetime = Number(body.expires_in) > 0 ? Number(body.expires_in) : 3600;
  return { token: body.access_token, expiresAt: now + Math.max(lifetime - 60, 30) * 1000 };
}

async function accessToken(config, key) {
  const audience = key.token_uri || TOKEN_URL;
  const tokenUrl = (typeof config.tokenUrl === "string" && config.tokenUrl.trim()) || audience;
  const cacheKey = `${key.client_email}|${key.private_key_id ?? ""}|${tokenUrl}`;
  const now = Date.now();
  const cached = tokens.get(cacheKey);
  if (cached && cached.expiresAt > now) return (await cached.promise).token;
  const promise = requestToken(config, key, audience, tokenUrl, now);
  const entry = { promise, expiresAt: now + 30 * 1000 };
  tokens.set(cacheKey, entry);
  try {
    const got = await promise;
    entry.expiresAt = got.expiresAt;
    return got.token;
  } catch (e) {
    if (tokens.get(cacheKey) === entry) tokens.delete(cacheKey);
    throw e;
  }
}

async function headersFor(config, key) {
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = `Bearer ${await accessToken(config, key)}`;
  return headers;
}

// ---------- exports ----------

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("type is required for event", 400);
  const topic = lookup(topicMap(config.eventToTopicMap), event);
  if (!topic) throw new DestinationError("No topic set for this event", 400);
  const { origin, key } = target(config);
  const projectId = (typeof config.projectId === "string" && config.projectId.trim()) || key?.project_id;
  if (!projectId) throw new DestinationError("projectId is required", 400);
  const name = String(topic).startsWith("projects/")
    ? String(topic).split("/").map(encodeURIComponent).join("/")
    : `projects/${encodeURIComponent(projectId)}/topics/${encodeURIComponent(topic)}`;
  const message = { data: base64(canonical(event)) };
  const attributes = attributesOf(event, config);
  if (Object.keys(attributes).length > 0) message.attributes = attributes;
  return {
    method: "POST",
    endpoint: `${origin}/v1/${name}:publish`,
    headers: await headersFor(config, key),
    params: {},
    body: { JSON: { messages: [message] } },
  };
}

function messageBytes(m) {
  let n = (m.data?.length ?? 0) + 32;
  for (const [k, v] of Object.entries(m.attributes ?? {})) n += k.length + String(v).length + 8;
  return n;
}

export async function batch(requests, destination) {
  const config = destination?.Config ?? {};
  const { key } = target(config);
  const headers = await headersFor(config, key);
  const groups = [];
  const open = new Map();
  requests.forEach((request, i) => {
    const messages = request?.body?.JSON?.messages ?? [];
    const size = messages.reduce((n, m) => n + messageBytes(m), 0);
    let group = open.get(request.endpoint);
    if (
      !group ||
      group.messages.length + messages.length > PUBLISH_MAX_MESSAGES ||
      group.bytes + size > PUBLISH_MAX_BYTES
    ) {
      group = { endpoint: request.endpoint, messages: [], bytes: 0, events: [] };
      groups.push(group);
      open.set(request.endpoint, group);
    }
    group.messages.push(...messages);
    group.bytes += size;
    group.events.push(i);
  });
  return groups.map((g) => ({
    request: { method: "POST", endpoint: g.endpoint, headers, params: {}, body: { JSON: { messages: g.messages } } },
    events: g.events,
  }));
}
