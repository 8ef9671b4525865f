// CleverTap through its upload API (https://developer.clevertap.com/docs/upload-events-api,
// /docs/upload-user-profiles-api, /docs/upload-device-tokens-api), as RudderStack's
// CLEVERTAP destination maps events.
// Endpoint: POST https://api.clevertap.com/1/upload, or https://<region>.api.clevertap.com/1/upload
// for a `region` (in1, sg1, us1, aps3, mec1…; "none" or empty = the default host).
// Auth: headers X-CleverTap-Account-Id: <accountId>, X-CleverTap-Passcode: <passcode>.
// Config (RudderStack's keys): accountId, passcode, region, trackAnonymous,
// enableObjectIdMapping. Keel extension: apiBaseUrl replaces the origin (the request goes
// to <apiBaseUrl>/1/upload).
// Mapping (every request is {d: [record]}):
//   identify → {type: "profile", profileData, ts (traits.ts, in seconds), identity (userId,
//     else anonymousId)}; profileData: Email, Name (name, else first + last name), Phone,
//     Gender (M/F), Employed, DOB, Education, Married, Customer Type, Photo (avatar), the
//     other traits (objects and arrays as JSON strings, except category-unsubscribe /
//     category-resubscribe), plus traits.overrideFields as given. With
//     enableObjectIdMapping: objectId = anonymousId and profileData.identity = userId (only
//     a userId: identity at the root); and when context.device.token is set on an Android /
//     Apple device a second record {type: "token", tokenData {id, type: fcm / apns or
//     integrations.clevertap.deviceTokenType, keys: integrations.clevertap.chromeKeys},
//     objectId} as a second request.
//   track → {type: "event", evtName: event, evtData: properties (objects and arrays as JSON
//     strings), ts: properties.ts in seconds}; "Order Completed" → evtName "Charged" with
//     "Charged ID" (checkout_id), Amount (revenue), Items (products, an array of objects).
//     Without a userId the event is refused unless trackAnonymous. Identity as for identify
//     (objectId = anonymousId first with enableObjectIdMapping).
//   page → evtName "Web Page Viewed: <name>" (or "Web Page Viewed"); screen → "Screen
//     Viewed: <name>" (or "Screen Viewed"); otherwise as track.
//   alias → {type: "profile", profileData: {identity: userId}, identity: previousId}.
//   group → UnsupportedEventError (CleverTap's upload API has no accounts / groups).
// Batching: batch() puts the records of up to 1000 requests into one {d: [...]} (CleverTap's
// limit per upload call). batchResponse(): CleverTap answers 200 with status "success",
// "partial" or "fail" and `unprocessed` [{status, code, error, record}]; the events whose
// records are listed there are dead-lettered with CleverTap's error, the others are
// delivered (a "fail" / "partial" answer whose records cannot be matched dead-letters every
// event of the request, as RudderStack does for the whole batch).
// Departures from RudderStack: RudderStack fails the whole batch on any "partial" answer;
// Keel fails only the unprocessed records' events when it can match them.
import { DestinationError, UnsupportedEventError, baseUrl, get, first } from "keel";

export const maxBatchSize = 1000;
export const maxBatchBytes = 4 * 1024 * 1024;

const EXCLUDED_TRAITS = [
  "email", "firstName", "firstname", "first_name", "lastName", "lastname", "last_name", "name",
  "phone", "gender", "education", "employed", "birthday", "married", "customerType",
  "anonymousId", "avatar", "userId", "id", "ts", "overrideFields",
];
const KEEP_AS_OBJECT = ["category-unsubscribe", "category-resubscribe"];
const TOKEN_TYPES = ["chrome", "fcm", "gcm", "apns", "wns", "mpns"];
const APPLE = ["ios", "watchos", "ipados", "tvos"];
const RESERVED = ["__proto__", "constructor", "prototype"];

const USER_ID_ONLY = ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"];
const USER_ID = [...USER_ID_ONLY, "anonymousId"];
const FIRST_NAME = ["traits.firstName", "traits.firstname", "traits.first_name", "context.traits.firstName", "context.traits.firstname", "context.traits.first_name"];
const LAST_NAME = ["traits.lastName", "traits.lastname", "traits.last_name", "context.traits.lastName", "context.traits.lastname", "context.traits.last_name"];

// ---------- helpers ----------

const usable = (v) => Boolean(v) || v === 0 || v === false;
const present = (v) => v !== undefined && v !== null;

// A dotted key makes nested objects, as RudderStack's set-value does.
function setPath(obj, path, value) {
  const keys = String(path).split(".");
  let o = obj;
  for (let i = 0; i < keys.length - 1; i += 1) {
    if (o[keys[i]] === null || typeof o[keys[i]] !== "object") o[keys[i]] = {};
    o = o[keys[i]];
  }
  o[keys[keys.length - 1]] = value;
}

function compact(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (present(v)) out[k] = v;
  return out;
}

// Drops null / undefined members, empty objects and empty arrays, at every depth.
function deepCompact(value) {
  if (Array.isArray(value)) {
    const items = value.map(deepCompact).filter(present);
    return items.length === 0 ? null : items;
  }
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      const c = deepCompact(v);
      if (present(c)) out[k] = c;
    }
    return Object.keys(out).length === 0 ? null : out;
  }
  return value;
}

// Handlebars' HTML escaping of a "{{value}}" template.
function escapeHtml(v) {
  const s = String(v);
  const map = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", "`": "&#x60;", "=": "&#x3D;" };
  return s.replace(/[&<>"'`=]/g, (c) => map[c]);
}

const seconds = (t) => Math.floor(new Date(t).getTime() / 1000);

function fixTs(payload) {
  if (payload.ts && !Number(payload.ts)) payload.ts = seconds(payload.ts);
}

// Objects and arrays become JSON strings; "Charged" Items must stay an array of objects.
function stringifyNested(payload, eventName) {
  const out = {};
  for (const [key, value] of Object.entries(payload)) {
    out[key] = value && typeof value === "object" && !KEEP_AS_OBJECT.includes(key) ? JSON.stringify(value) : value;
  }
  if (eventName === "Charged" && out.Items) {
    let items;
    try {
      items = typeof out.Items === "string" ? JSON.parse(out.Items) : out.Items;
    } catch {
      items = out.Items;
    }
    if (!Array.isArray(items) || items[0] === null || typeof items[0] !== "object") {
      throw new DestinationError("Products property value must be an array of objects", 400);
    }
    out.Items = items;
  }
  return out;
}

// Copies the members of the objects at `paths` except `excluded` into `payload`.
function extractCustom(event, payload, paths, excluded) {
  for (const path of paths) {
    const source = get(event, path);
    if (!source || typeof source !== "object") continue;
    for (const key of Object.keys(source)) {
      if (excluded.includes(key) || RESERVED.includes(key)) continue;
      if (source[key] !== undefined) setPath(payload, key, source[key]);
    }
  }
  return payload;
}

function integrationsObj(event) {
  const i = event.integrations ?? {};
  return i.clevertap || i.Clevertap || i.CleverTap || i.CLEVERTAP || null;
}

function endpoint(config) {
  const { region } = config;
  const origin = region && region !== "none" ? `https://${region}.api.clevertap.com` : "https://api.clevertap.com";
  return `${baseUrl(config.apiBaseUrl, origin)}/1/upload`;
}

function wrap(payload, config) {
  return {
    method: "POST",
    endpoint: endpoint(config),
    headers: {
      "X-CleverTap-Account-Id": config.accountId,
      "X-CleverTap-Passcode": config.passcode,
      "Content-Type": "application/json",
    },
    params: {},
    body: { JSON: payload },
  };
}

// ---------- identify ----------

const PROFILE_FIELDS = [
  ["Email", ["traits.email", "context.traits.email", "properties.email"]],
  ["Name", ["traits.name", "context.traits.name"]],
  ["Phone", ["traits.phone", "context.traits.phone"]],
  ["Gender", ["traits.gender", "context.traits.gender"]],
  ["Employed", ["traits.employed", "context.traits.employed"]],
  ["DOB", ["traits.birthday", "context.traits.birthday"]],
  ["Education", ["traits.education", "context.traits.education"]],
  ["Married", ["traits.married", "context.traits.married"]],
  ["Customer Type", ["traits.customerType", "context.traits.customerType"]],
  ["Photo", ["traits.avatar", "context.traits.avatar"]],
];
const FEMALE = ["f", "F", "Female", "female", "FEMALE"];
const MALE = ["m", "M", "Male", "male", "MALE"];

function profileOf(event) {
  let profile = {};
  for (const [key, paths] of PROFILE_FIELDS) {
    let v = first(event, paths);
    if (key === "Gender" && present(v)) v = FEMALE.includes(v) ? "F" : MALE.includes(v) ? "M" : undefined;
    if (usable(v)) profile[key] = v;
  }
  const firstName = first(event, FIRST_NAME);
  const lastName = first(event, LAST_NAME);
  if (!profile.Name && firstName && lastName) profile.Name = `${firstName} ${lastName}`;
  profile = extractCustom(event, profile, ["traits", "context.traits"], EXCLUDED_TRAITS);
  profile = stringifyNested(profile);
  const override = event.traits?.overrideFields || event.context?.traits?.overrideFields;
  if (override && typeof override === "object") Object.assign(profile, override);
  return compact(profile);
}

function identify(event, config) {
  const profile = profileOf(event);
  const ts = get(event, "traits.ts") || get(event, "context.traits.ts");
  if (!config.enableObjectIdMapping) {
    const record = { type: "profile", profileData: profile, ts, identity: first(event, USER_ID) ?? undefined };
    fixTs(record);
    return wrap({ d: [record] }, config);
  }
  const userId = first(event, USER_ID_ONLY);
  const anonymousId = event.anonymousId;
  const record = { type: "profile", profileData: profile, ts };
  fixTs(record);
  if (anonymousId) {
    record.objectId = anonymousId;
    if (userId) record.profileData.identity = userId;
  } else if (userId) {
    record.identity = userId;
  }
  const requests = [wrap({ d: [record] }, config)];
  const token = get(event, "context.device.token");
  let os = get(event, "context.os.name");
  if (typeof os === "string") os = os.toLowerCase();
  if (anonymousId && token && (os === "android" || APPLE.includes(os))) {
    const integ = integrationsObj(event);
    const type = integ?.deviceTokenType && TOKEN_TYPES.includes(integ.deviceTokenType)
      ? integ.deviceTokenType
      : os === "android" ? "fcm" : "apns";
    const keys = present(integ?.chromeKeys) ? integ.chromeKeys : null;
    const tokenRecord = { type: "token", tokenData: { id: token, type, keys }, objectId: anonymousId };
    requests.push(wrap(deepCompact({ d: [tokenRecord] }) ?? {}, config));
  }
  return requests.length === 1 ? requests[0] : requests;
}

// ---------- track / page / screen ----------

function eventName(event, type) {
  if (type === "track") {
    const name = event.event;
    if (!usable(name)) throw new DestinationError('Missing required value from "event"', 400);
    return name;
  }
  const value = first(event, ["event", "properties.event", "name", "properties.name"]);
  const prefix = type === "page" ? "Web Page Viewed" : "Screen Viewed";
  if (!present(value)) return prefix;
  return `${prefix}: ${escapeHtml(value)}`.trim();
}

function trackLike(event, type, config) {
  if (!config.trackAnonymous && !first(event, USER_ID_ONLY)) {
    throw new DestinationError("userId, not present cannot track anonymous user", 400);
  }
  const props = event.properties;
  let record;
  if (present(event.event) && String(event.event).toLowerCase() === "order completed") {
    const data = {};
    for (const [key, path] of [["Charged ID", "checkout_id"], ["Amount", "revenue"], ["Items", "products"]]) {
      const v = props?.[path];
      if (usable(v)) data[key] = v;
    }
    record = {
      evtName: "Charged",
      evtData: extractCustom(event, data, ["properties"], ["checkout_id", "revenue", "products", "ts"]),
      ts: get(event, "properties.ts"),
    };
  } else {
    record = { evtName: eventName(event, type), evtData: present(props) ? props : {}, ts: get(event, "properties.ts") };
  }
  record.type = "event";
  if (record.evtData) record.evtData = stringifyNested(record.evtData, record.evtName);
  if (config.enableObjectIdMapping) {
    const userId = first(event, USER_ID_ONLY);
    if (event.anonymousId) record.objectId = event.anonymousId;
    else if (userId) record.identity = userId;
    else throw new DestinationError("Unable to process without anonymousId or userId", 400);
  } else {
    record.identity = first(event, USER_ID);
  }
  fixTs(record);
  return wrap({ d: [compact(record)] }, config);
}

// ---------- alias ----------

function alias(event, config) {
  const record = {
    type: "profile",
    profileData: { identity: event.userId },
    ts: get(event, "traits.ts") || get(event, "context.traits.ts"),
    identity: event.previousId,
  };
  fixTs(record);
  return wrap({ d: [record] }, config);
}

// ---------- entry points ----------

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.accountId) throw new DestinationError("Account ID is required (accountId)", 400);
  if (!config.passcode) throw new DestinationError("Passcode is required (passcode)", 400);
  if (!event.type) throw new DestinationError("Message Type is not present. Aborting message.", 400);
  const type = String(event.type).toLowerCase();
  switch (type) {
    case "identify":
      return identify(event, config);
    case "track":
    case "page":
    case "screen":
      return trackLike(event, type, config);
    case "alias":
      return alias(event, config);
    default:
      throw new UnsupportedEventError(
        `Message type not supported: CleverTap takes identify, track, page, screen and alias, not ${type}`,
      );
  }
}

// All records into one upload call (at most 1000, the router's maxBatchSize).
export function batch(requests) {
  if (requests.length === 0) return [];
  const records = [];
  for (const r of requests) records.push(...(r.body?.JSON?.d ?? []));
  const head = requests[0];
  return [
    {
      request: { ...head, body: { JSON: { d: records } } },
      events: requests.map((_, i) => i),
    },
  ];
}

function sameRecord(a, b) {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function canonical(v) {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    const out = {};
    for (const k of Object.keys(v).sort()) out[k] = canonical(v[k]);
    return out;
  }
  return v;
}

export function batchResponse(response, requests) {
  if (response.status < 200 || response.status >= 300) return requests.map(() => null);
  let body = response.body;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      return requests.map(() => null);
    }
  }
  if (!body || typeof body !== "object" || body.status === "success" || body.status === undefined) {
    return requests.map(() => null);
  }
  const unprocessed = Array.isArray(body.unprocessed) ? body.unprocessed : [];
  const answers = requests.map(() => null);
  let unmatched = unprocessed.length === 0;
  for (const u of unprocessed) {
    const i = requests.findIndex((r) => (r.body?.JSON?.d ?? []).some((rec) => u?.record && sameRecord(u.record, rec)));
    if (i < 0) {
      unmatched = true;
      continue;
    }
    answers[i] = { status: 400, error: `CleverTap: ${u.error ?? "record not processed"} (code ${u.code ?? "?"})` };
  }
  if (unmatched) {
    // Failures that cannot be traced to their events: the whole request failed (RudderStack's
    // behaviour for any answer but "success").
    const error = `CleverTap answered status ${JSON.stringify(body.status)}: ${JSON.stringify(body).slice(0, 500)}`;
    return requests.map(() => ({ status: 400, error }));
  }
  return answers.map((a) => a ?? null);
}
