// Klaviyo through its JSON:API (https://developers.klaviyo.com/en/reference/api_overview),
// the "profile import" implementation RudderStack selects with apiVersion "v2" (revision
// 2024-10-15) or "v3" (revision 2026-04-15).
// Endpoints (https://a.klaviyo.com):
//   POST /api/profile-import                          create or update a profile
//   POST /api/events                                  one event (with its profile)
//   POST /api/profile-subscription-bulk-create-jobs   subscribe profiles to a list
//   POST /api/profile-subscription-bulk-delete-jobs   unsubscribe profiles from a list
// Auth: `Authorization: Klaviyo-API-Key <privateApiKey>`, header `revision`.
// Config (RudderStack's keys): privateApiKey, apiVersion ("v2" | "v3"), listId, consent
// (["email", "sms"]), flattenProperties, enforceEmailAsPrimary.
// Keel extension: apiBaseUrl replaces https://a.klaviyo.com.
// Mapping:
//   identify → /api/profile-import {data: {type: "profile", id (klaviyo-profileId external
//     id), attributes: {external_id, anonymous_id, email, first_name, last_name,
//     phone_number (must be E.164), title, organization, location{…}, image, _kx,
//     properties: the other traits}, meta: {patch_properties}}}
//     (integrations.Klaviyo.fieldsToUnset/fieldsToAppend/fieldsToUnappend); with
//     traits.properties.subscribe (true/false) and a list (traits.properties.listId or
//     config listId) also a subscription (or unsubscription) bulk job with the consent.
//   track / screen → /api/events {data: {type: "event", attributes: {metric: {name}, value
//     (revenue|total|value), value_currency, time, unique_id: messageId, properties, profile}}}
//   group → traits.subscribe true/false: a bulk (un)subscription job for list = groupId.
//   page, alias → skipped (not supported).
// Batching: batch() merges subscription (or unsubscription) jobs for the same list, up to
// 100 profiles per job (RudderStack's MAX_BATCH_SIZE); profile imports and events go one
// per request as RudderStack sends them. No per-item results (bulk jobs are asynchronous),
// so no batchResponse.
// Departures from RudderStack: apiVersion absent is treated as "v2" (RudderStack's
// transformer falls back to its legacy 2023-02-22 implementation, "v1", which is not
// implemented here: apiVersion "v1" is refused with 400). RudderStack sends a batch's
// profile imports before its subscription job in sequence; Keel sends the batch's
// requests concurrently (a bulk subscription job creates a missing profile itself).
// The E.164 phone check is a format check (+, country code, 7–15 digits after removing
// spaces and punctuation), not libphonenumber's full parse.
import { DestinationError, UnsupportedEventError, baseUrl, get, isSet, first } from "keel";

export const maxBatchSize = 100;

const REVISIONS = { v2: "2024-10-15", v3: "2026-04-15" };
const SUBSCRIPTION_MAX = 100;

const WHITELISTED_TRAITS = [
  "email", "firstName", "firstname", "first_name", "lastName", "lastname", "last_name",
  "phone", "title", "organization", "city", "region", "country", "zip", "image", "timezone",
  "anonymousId", "userId", "properties", "location", "_kx", "street", "address",
];
const EVENT_EXCLUDES = ["event", "email", "phone", "revenue", "total", "value", "value_currency", "currency"];

// ---------- helpers ----------

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

// RudderStack's flattenJson(data, ".", "normal", false): nested objects become dotted keys,
// arrays of objects become key[i], other arrays stay.
function flatten(data) {
  const result = {};
  const walk = (cur, prop) => {
    if (Object(cur) !== cur) {
      result[prop] = cur;
    } else if (Array.isArray(cur)) {
      if (typeof cur[0] === "object") {
        cur.forEach((v, i) => walk(v, `${prop}[${i}]`));
        if (cur.length === 0) result[prop] = [];
      } else {
        result[prop] = cur;
      }
    } else {
      const keys = Object.keys(cur);
      keys.forEach((k) => walk(cur[k], prop ? `${prop}.${k}` : k));
      if (keys.length === 0 && prop) result[prop] = {};
    }
  };
  walk(data, "");
  return result;
}

function externalIdOf(event, type) {
  const list = event.context?.externalId;
  if (!Array.isArray(list)) return null;
  const found = list.find((e) => e?.type === type);
  return found ? found.id : null;
}

function isE164(phone) {
  if (typeof phone !== "string") return false;
  const sanitized = phone.replace(/[^\d+]/g, "");
  return /^\+[1-9]\d{6,14}$/.test(sanitized);
}

function versionOf(config) {
  const v = config.apiVersion ?? "v2";
  if (v === "v1") {
    throw new DestinationError("Klaviyo apiVersion v1 (the legacy 2023-02-22 API) is not supported by Keel: use v2", 400);
  }
  if (!REVISIONS[v]) throw new DestinationError(`Unsupported Klaviyo apiVersion: ${v}`, 400);
  return v;
}

function request(config, path, body) {
  return {
    method: "POST",
    endpoint: `${baseUrl(config.apiBaseUrl, "https://a.klaviyo.com")}${path}`,
    headers: {
      Authorization: `Klaviyo-API-Key ${config.privateApiKey}`,
      Accept: "application/json",
      "Content-Type": "application/json",
      revision: REVISIONS[versionOf(config)],
    },
    params: {},
    body: { JSON: dropNulls(body) },
  };
}

// ---------- profile ----------

const LOCATION = {
  city: ["traits.city", "traits.address.city", "context.traits.city", "context.traits.address.city", "properties.city"],
  region: [
    "traits.region", "traits.address.region", "context.traits.region", "context.traits.address.region",
    "properties.region", "traits.state", "traits.address.state", "context.traits.address.state",
    "context.traits.state", "properties.state",
  ],
  country: ["traits.country", "traits.address.country", "context.traits.country", "context.traits.address.country", "properties.country"],
  zip: [
    "traits.zip", "traits.postalcode", "traits.postalCode", "traits.address.zip", "traits.address.postalcode",
    "traits.address.postalCode", "context.traits.zip", "context.traits.postalcode", "context.traits.postalCode",
    "context.traits.address.zip", "context.traits.address.postalcode", "context.traits.address.postalCode",
    "properties.zip", "properties.postalcode", "properties.postalCode",
  ],
  ip: ["context.ip", "request_ip"],
  timezone: ["traits.timezone", "context.traits.timezone", "properties.timezone"],
  latitude: ["latitude", "context.address.latitude", "context.location.latitude"],
  longitude: ["longitude", "context.address.longitude", "context.location.longitude"],
  address1: ["traits.street", "traits.address.street", "context.traits.street", "context.traits.address.street", "properties.street"],
};

const USER_ID = ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"];

function profileAttributes(event) {
  const out = {};
  const put = (key, v) => {
    if (v || v === 0 || v === false) setPath(out, key, v);
  };
  put("external_id", first(event, USER_ID));
  put("anonymous_id", get(event, "anonymousId"));
  put("email", first(event, ["traits.email", "context.traits.email", "properties.email"]));
  put("first_name", first(event, [
    "traits.firstName", "traits.firstname", "traits.first_name",
    "context.traits.firstName", "context.traits.firstname", "context.traits.first_name",
  ]));
  put("last_name", first(event, [
    "traits.lastName", "traits.lastname", "traits.last_name",
    "context.traits.lastName", "context.traits.lastname", "context.traits.last_name",
  ]));
  put("phone_number", first(event, ["traits.phone", "context.traits.phone", "properties.phone"]));
  put("title", first(event, ["traits.title", "context.traits.title", "properties.title"]));
  put("organization", first(event, ["traits.organization", "context.traits.organization", "properties.organization"]));
  for (const key of ["city", "region", "country", "zip", "ip"]) put(`location.${key}`, first(event, LOCATION[key]));
  put("_kx", first(event, ["traits._kx", "context.traits._kx"]));
  put("image", first(event, ["traits.image", "context.traits.image", "properties.image"]));
  for (const key of ["timezone", "latitude", "longitude", "address1"]) put(`location.${key}`, first(event, LOCATION[key]));
  return out;
}

function integrationsObj(event) {
  const i = event.integrations ?? {};
  return i.KLAVIYO || i.Klaviyo || i.klaviyo || null;
}

function patchMeta(event) {
  const intg = integrationsObj(event);
  const traits = first(event, ["traits", "context.traits"]) ?? {};
  const meta = { patch_properties: {} };
  let fields = [];
  if (Array.isArray(intg?.fieldsToUnset)) {
    meta.patch_properties.unset = intg.fieldsToUnset;
    fields = intg.fieldsToUnset;
  }
  for (const [key, name] of [["fieldsToAppend", "append"], ["fieldsToUnappend", "unappend"]]) {
    if (Array.isArray(intg?.[key])) {
      const values = {};
      for (const f of intg[key]) if (isSet(traits[f])) values[f] = traits[f];
      meta.patch_properties[name] = values;
      fields = fields.concat(intg[key]);
    }
  }
  return { meta, fields };
}

// RudderStack's extractCustomFields over traits then context.traits.
function customTraits(event, exclude) {
  const out = {};
  const keys = [];
  for (const source of [event.traits, event.context?.traits]) {
    if (!source) continue;
    for (const k of Object.keys(source)) {
      if (!exclude.includes(k) && !["__proto__", "constructor", "prototype"].includes(k)) keys.push(k);
    }
    for (const k of keys) if (source[k] !== undefined) setPath(out, k, get(source, k));
  }
  return out;
}

function profile(event, config, isIdentify) {
  const attributes = profileAttributes(event);
  if (isSet(attributes.phone_number) && !isE164(attributes.phone_number)) {
    throw new DestinationError("Phone number is not in E.164 format.", 400);
  }
  const { meta, fields } = patchMeta(event);
  let custom = customTraits(event, [...WHITELISTED_TRAITS, ...fields]);
  if (config.flattenProperties) custom = flatten(custom);
  if (config.enforceEmailAsPrimary) {
    delete attributes.external_id;
    custom = { ...custom, _id: first(event, USER_ID) };
  }
  const data = dropNulls({
    type: "profile",
    id: externalIdOf(event, "klaviyo-profileId"),
    attributes: { ...attributes, properties: dropNulls(custom), meta },
  });
  if (isIdentify) {
    data.meta = meta;
    delete data.attributes.meta;
  }
  return { data };
}

// ---------- subscriptions ----------

function subscription(event, traits, config, operation) {
  const version = versionOf(config);
  const consent = traits?.consent || traits?.properties?.consent || config.consent;
  const email = first(event, ["traits.email", "context.traits.email", "properties.email", "context.externalId.0.id"]);
  const phone = first(event, ["traits.phone", "context.traits.phone", "properties.phone"]);
  const attributes = { email, phone_number: phone };
  const attach = version === "v3" || (operation === "subscribe" && !!consent);
  if (attach) {
    const channels = Array.isArray(consent) ? consent : [consent];
    const status = operation === "subscribe" ? "SUBSCRIBED" : "UNSUBSCRIBED";
    if (channels.includes("email") && email) setPath(attributes, "subscriptions.email.marketing.consent", status);
    if (channels.includes("sms") && phone) setPath(attributes, "subscriptions.sms.marketing.consent", status);
  }
  if (version === "v3" && !attributes.subscriptions) {
    throw new DestinationError(
      "No subscriptions could be resolved for v3 API version. Ensure consent channels (email/sms) match the identifiers present in the event",
      400,
    );
  }
  const prof = dropNulls({
    type: "profile",
    id: operation === "subscribe" ? externalIdOf(event, "klaviyo-profileId") : undefined,
    attributes: dropNulls(attributes),
  });
  if (!email && !phone && prof.id) {
    throw new DestinationError(
      operation === "subscribe"
        ? "Profile Id, Email or/and Phone are required to subscribe to a list"
        : "Email or/and Phone are required to unsubscribe from a list",
      400,
    );
  }
  let listId = config.listId;
  if (traits?.properties?.listId) listId = traits.properties.listId;
  if (String(event.type).toLowerCase() === "group") listId = event.groupId;
  const subscribe = operation === "subscribe";
  return request(config, subscribe ? "/api/profile-subscription-bulk-create-jobs" : "/api/profile-subscription-bulk-delete-jobs", {
    data: {
      type: subscribe ? "profile-subscription-bulk-create-job" : "profile-subscription-bulk-delete-job",
      attributes: { profiles: { data: [prof] } },
      relationships: { list: { data: { type: "list", id: listId } } },
    },
  });
}

// ---------- per type ----------

function identify(event, config) {
  const traits = first(event, ["traits", "context.traits"]);
  const out = [request(config, "/api/profile-import", dropNulls(profile(event, config, true)))];
  if (isSet(traits?.properties?.subscribe) && (traits.properties?.listId || config.listId)) {
    out.push(subscription(event, traits, config, traits.properties.subscribe ? "subscribe" : "unsubscribe"));
  }
  return out.length === 1 ? out[0] : out;
}

function track(event, config) {
  const name = get(event, "event") || get(event, "name");
  if (name && typeof name !== "string") throw new DestinationError("Event type should be a string", 400);
  const attributes = {};
  const props = event.properties;
  const value = first(event, ["properties.revenue", "properties.total", "properties.value"]);
  if (value || value === 0) {
    const f = Number.parseFloat(value);
    if (Number.isNaN(f)) throw new DestinationError("Invalid float value", 400);
    attributes.value = f;
  }
  const currency = get(event, "properties.currency");
  if (currency || currency === 0 || currency === false) attributes.value_currency = currency;
  const time = first(event, ["timestamp", "originalTimestamp"]);
  if (time) attributes.time = time;
  // RudderStack removes these keys from the event's properties (also before the profile
  // reads properties.email / properties.phone).
  let shown = event;
  if (props && typeof props === "object") {
    const kept = { ...props };
    for (const k of EVENT_EXCLUDES) delete kept[k];
    attributes.properties = kept;
    shown = { ...event, properties: kept };
  }
  if (config.flattenProperties) attributes.properties = flatten(attributes.properties);
  attributes.profile = dropNulls(profile(shown, config, false));
  attributes.metric = { data: { type: "metric", attributes: { name } } };
  attributes.unique_id = event.messageId;
  return request(config, "/api/events", { data: { type: "event", attributes } });
}

function group(event, config) {
  if (!event.groupId) throw new DestinationError("groupId is a required field for group events", 400);
  const traits = first(event, ["traits", "context.traits"]);
  if (!isSet(traits?.subscribe)) throw new DestinationError("Subscribe flag should be included in group call", 400);
  return subscription(event, traits, config, traits.subscribe ? "subscribe" : "unsubscribe");
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Event type is required", 400);
  if (!config.privateApiKey) {
    throw new DestinationError(`Private API Key is a required field for ${event.type} events`, 400);
  }
  versionOf(config);
  const type = String(event.type).toLowerCase();
  if (type === "identify") return identify(event, config);
  if (type === "track" || type === "screen") return track(event, config);
  if (type === "group") return group(event, config);
  throw new UnsupportedEventError(`Event type ${type} is not supported`);
}

// ---------- batching ----------

// Output order follows RudderStack's router: events, then each subscription job preceded
// by the profile imports of the same identify calls (the request just before it), then
// the other profile imports.
export function batch(requests) {
  const isJob = (r) => /\/api\/profile-subscription-bulk-(create|delete)-jobs$/.test(String(r?.endpoint));
  const isImport = (r) => /\/api\/profile-import$/.test(String(r?.endpoint));
  const events = [];
  const imports = [];
  const lists = new Map(); // operation + list id → indices of jobs
  requests.forEach((r, i) => {
    if (isJob(r)) {
      const create = String(r.endpoint).endsWith("create-jobs");
      const key = `${create ? 0 : 1} ${r.body?.JSON?.data?.relationships?.list?.data?.id}`;
      if (!lists.has(key)) lists.set(key, []);
      lists.get(key).push(i);
    } else if (isImport(r)) {
      imports.push(i);
    } else {
      events.push(i);
    }
  });
  const out = events.map((i) => ({ request: requests[i], events: [i] }));
  const paired = new Set();
  const keys = [...lists.keys()].filter((k) => k[0] === "0").concat([...lists.keys()].filter((k) => k[0] === "1"));
  for (const key of keys) {
    const indices = lists.get(key);
    for (let s = 0; s < indices.length; s += SUBSCRIPTION_MAX) {
      const chunk = indices.slice(s, s + SUBSCRIPTION_MAX);
      for (const i of chunk) {
        if (i > 0 && isImport(requests[i - 1]) && !paired.has(i - 1)) {
          paired.add(i - 1);
          out.push({ request: requests[i - 1], events: [i - 1] });
        }
      }
      const firstReq = requests[chunk[0]];
      const data = firstReq.body.JSON.data;
      const profiles = chunk.flatMap((i) => requests[i].body.JSON.data.attributes?.profiles?.data ?? []);
      out.push({
        request: { ...firstReq, body: { JSON: { data: { ...data, attributes: { profiles: { data: profiles } } } } } },
        events: chunk,
      });
    }
  }
  for (const i of imports) if (!paired.has(i)) out.push({ request: requests[i], events: [i] });
  return out;
}
