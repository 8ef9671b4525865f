// HubSpot, as RudderStack's HS destination maps event-stream identify and track calls
// (rETL / record / context.mappedToDestination events are not handled here).
// Config (RudderStack's keys): authorizationType ("newPrivateAppApi" → accessToken as
// Bearer token; otherwise legacy hapikey: apiKey + hubID), apiVersion ("newApi" or
// "legacyApi", the default), lookupField (newApi identify), hubID (legacy track),
// hubspotEvents (newApi track: [{rsEventName, hubspotEventName, eventProperties:
// [{from, to}]}]).
// Keel extensions: apiBaseUrl replaces https://api.hubapi.com (and
// https://track.hubspot.com for legacy track); contactProperties ([{name, type,
// hasUniqueValue}], HubSpot's /crm/v3/properties/contacts `results`) when set replaces the
// property lookup below (tests, or to spare the call).
// Lookups (fetch, as RudderStack does them during the transformation): the contact
// properties (GET /crm/v3/properties/contacts, cached 10 minutes per destination) decide
// which custom traits go out and how they are typed (date → UTC midnight ms, string
// properties stringified, number/bool checked), and whether lookupField is unique; newApi
// identify on a non-unique lookupField searches the contact
// (POST /crm/v3/objects/contacts/search).
// Mapping:
//   legacyApi identify → POST /contacts/v1/contact/createOrUpdate/email/{email}
//     {properties: [{property, value}]} (email required).
//   legacyApi track → GET https://track.hubspot.com/v1/event?_a=hubID&_n=event&_m=revenue
//     (+ contact properties as query parameters).
//   newApi identify → with a unique lookupField: POST /crm/v3/objects/contacts/batch/upsert
//     {inputs: [{id, idProperty, properties, objectWriteTraceId}]}; else with the
//     hsContactId external id or a search hit: PATCH /crm/v3/objects/contacts/{id}; else
//     POST /crm/v3/objects/contacts (create).
//   newApi track → POST /events/v3/send (custom behavioural event) {eventName, email, utk,
//     objectId, occurredAt, properties} with the event mapped through hubspotEvents.
//   page, screen, group, alias → skipped (not supported).
// Batching (RudderStack's router): legacy identifies → POST /contacts/v1/contact/batch/
// (array of {email, properties}, 1000 per request); newApi creates → batch/create, updates
// → batch/update, upserts → batch/upsert (100 per request, duplicates merged); track calls
// go one per request. batchResponse(): a 207 answer dead-letters the events named by
// errors[].context.objectWriteTraceId; a 2xx batch answer with neither results nor errors
// is a silent failure (dead-letter); a 400 for a multi-event batch is retried (RudderStack
// retries such events one by one).
// Departures from RudderStack: one lookup (/crm/v3/properties/contacts, whose `type` and
// `hasUniqueValue` RudderStack reads from /properties/v1/contacts/properties and the v3
// endpoint separately); objectWriteTraceId is the event's messageId (RudderStack: its job
// id); RudderStack's JSON_ARRAY {batch: "<json text>"} for the legacy batch is sent as the
// JSON array itself, which is what RudderStack's server sends on the wire.
import { DestinationError, UnsupportedEventError, baseUrl, get, isSet, notEmpty, first } from "keel";

export const maxBatchSize = 100;

const API = "https://api.hubapi.com";
const TRACK_API = "https://track.hubspot.com";
const LEGACY_BATCH_MAX = 1000;
const CRM_BATCH_MAX = 100;
const CACHE_MS = 10 * 60 * 1000;

// ---------- helpers ----------

function dropNulls(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (isSet(v)) out[k] = v;
  return out;
}

function externalIdOf(event, type) {
  const list = event.context?.externalId;
  if (!Array.isArray(list)) return null;
  const found = list.find((e) => e?.type === type);
  return found ? found.id : null;
}

const isEmail = (s) => typeof s === "string" && /^[^\s@"(),:;<>[\\\]]+@[^\s@"(),:;<>[\\\]]+\.[A-Za-z]{2,}$/.test(s);
const privateApp = (config) => config.authorizationType === "newPrivateAppApi";
const api = (config) => baseUrl(config.apiBaseUrl, API);

// Authentication as RudderStack adds it: a Bearer header, or the hapikey parameter.
function withAuth(req, config) {
  if (privateApp(config)) req.headers = { ...req.headers, Authorization: `Bearer ${config.accessToken}` };
  else req.params = { ...req.params, hapikey: config.apiKey };
  return req;
}

function validateConfig(config) {
  if (privateApp(config)) {
    if (!config.accessToken) throw new DestinationError("Access Token not found. Aborting", 400);
  } else {
    if (!config.hubID) throw new DestinationError("Hub ID not found. Aborting", 400);
    if (!config.apiKey) throw new DestinationError("API Key not found. Aborting", 400);
  }
}

// ---------- lookups ----------

const propertyCache = new Map(); // destination id → {at, map}

function lookupUrl(config, path) {
  const url = `${api(config)}${path}`;
  return privateApp(config) ? url : `${url}?hapikey=${encodeURIComponent(config.apiKey)}`;
}

function lookupHeaders(config) {
  const h = { "Content-Type": "application/json" };
  if (privateApp(config)) h.Authorization = `Bearer ${config.accessToken}`;
  return h;
}

function failStatus(status) {
  return status === 429 || status >= 500 ? 500 : 400;
}

// name → {type, unique}
async function contactProperties(destination) {
  const config = destination.Config ?? {};
  const toMap = (list) => {
    const map = {};
    for (const p of Array.isArray(list) ? list : []) {
      if (p && p.name) map[p.name] = { type: p.type, unique: Boolean(p.hasUniqueValue) };
    }
    return map;
  };
  if (Array.isArray(config.contactProperties)) return toMap(config.contactProperties);
  const key = String(destination.ID ?? "");
  const cached = propertyCache.get(key);
  if (cached && Date.now() - cached.at < CACHE_MS) return cached.map;
  let res;
  try {
    res = await fetchV2(lookupUrl(config, "/crm/v3/properties/contacts"), { method: "GET", headers: lookupHeaders(config) });
  } catch (e) {
    throw new DestinationError(`Failed to get hubspot properties: ${e.message}`, 500);
  }
  if (res.status !== 200) {
    throw new DestinationError(`Failed to get hubspot properties: ${JSON.stringify(res.body)}`, failStatus(res.status));
  }
  const map = toMap(res.body?.results);
  propertyCache.set(key, { at: Date.now(), map });
  return map;
}

function lookupFieldValue(event, lookupField) {
  for (const field of [lookupField, "email"]) {
    let value = get(event, String(field));
    if (!notEmpty(value)) {
      for (const source of ["traits", "context.traits", "properties"]) {
        const base = get(event, source);
        value = base ? base[field] : null;
        if (notEmpty(value)) break;
      }
    }
    if (notEmpty(value)) return { fieldName: field, value };
  }
  return null;
}

async function searchContact(event, config) {
  if (!first(event, ["traits", "context.traits"]) && !event.properties) {
    throw new DestinationError("Identify - Invalid traits value for lookup field", 400);
  }
  const info = lookupFieldValue(event, config.lookupField);
  if (!info?.value) {
    throw new DestinationError("Identify:: email i.e a default lookup field for contact lookup not found in traits", 400);
  }
  const body = {
    filterGroups: [{ filters: [{ propertyName: info.fieldName, value: info.value, operator: "EQ" }] }],
    sorts: ["ascending"],
    properties: [info.fieldName],
    limit: 2,
    after: 0,
  };
  let res;
  try {
    res = await fetchV2(lookupUrl(config, "/crm/v3/objects/contacts/search"), {
      method: "POST",
      headers: lookupHeaders(config),
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new DestinationError(`Failed to get hubspot contacts: ${e.message}`, 500);
  }
  if (res.status !== 200) {
    throw new DestinationError(`Failed to get hubspot contacts: ${JSON.stringify(res.body)}`, failStatus(res.status));
  }
  const results = res.body?.results ?? [];
  if (results.length > 1) {
    throw new DestinationError(
      "Unable to get single Hubspot contact. More than one contacts found. Retry with unique lookupPropertyName and lookupValue",
      400,
    );
  }
  return results.length === 1 ? results[0]?.id : null;
}

// ---------- contact properties of an event ----------

const COMMON = [
  ["email", ["traits.email", "context.traits.email", "properties.email"]],
  ["firstname", ["traits.firstName", "traits.firstname", "traits.first_name", "context.traits.firstName", "context.traits.firstname", "context.traits.first_name", "properties.firstname"]],
  ["lastname", ["traits.lastName", "traits.lastname", "traits.last_name", "context.traits.lastName", "context.traits.lastname", "context.traits.last_name", "properties.lastname"]],
  ["phone", ["traits.phone", "context.traits.phone", "properties.phone"]],
  ["address", ["traits.address.street", "context.traits.address.street", "properties.address.street"]],
  ["city", ["traits.address.city", "context.traits.address.city", "properties.address.city"]],
  ["country", ["traits.address.country", "context.traits.address.country", "properties.address.country"]],
  ["state", ["traits.address.state", "context.traits.address.state", "properties.address.state"]],
  ["zip", ["traits.address.postalcode", "context.traits.address.postalcode", "properties.address.postalcode"]],
  ["company", ["traits.company.name", "context.traits.company.name", "properties.company.name"]],
];

function finalTraits(event) {
  let traits = first(event, ["traits", "context.traits"]);
  if (!traits || Object.keys(traits).length === 0) traits = event.properties;
  return traits;
}

const formatKey = (k) => k.toLowerCase().replace(/\s+/g, "_").replace(/\./g, "_");

function midnight(v) {
  if (v === null) return null;
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return v;
  d.setUTCHours(0, 0, 0, 0);
  return d.getTime();
}

function typed(map, key, value, traitKey) {
  const type = map[key]?.type;
  let v = value;
  if (type === "string" && typeof v !== "string") v = typeof v === "object" ? JSON.stringify(v) : String(v);
  const mismatch = () =>
    new DestinationError(`Property ${traitKey} data type ${typeof v} is not matching with Hubspot property data type ${type}`, 400);
  if (type === "bool" && typeof v === "object") throw mismatch();
  if (type === "number" && typeof v !== "number") throw mismatch();
  return v;
}

async function contactPayload(event, destination) {
  const traits = finalTraits(event);
  if (!traits) return {};
  const map = await contactProperties(destination);
  const out = {};
  for (const [key, paths] of COMMON) {
    const v = first(event, paths);
    if (v || v === 0 || v === false) out[key] = v;
  }
  for (const traitKey of Object.keys(traits)) {
    const key = formatKey(traitKey);
    if (!out[traitKey] && map[key]?.type) {
      let v = traits[traitKey] === null ? "" : traits[traitKey];
      if (map[key].type === "date" && (typeof v === "string" || typeof v === "number")) v = midnight(v);
      out[key] = typed(map, key, v, traitKey);
    }
  }
  delete out.hs_object_id; // a HubSpot system field
  return out;
}

// ---------- legacy API ----------

async function legacyIdentify(event, destination, config) {
  const traits = first(event, ["traits", "context.traits"]);
  if (!traits || !traits.email) throw new DestinationError("Identify without email is not supported.", 400);
  const props = await contactPayload(event, destination);
  const properties = Object.keys(props).map((k) => ({ property: k, value: props[k] }));
  return withAuth(
    {
      method: "POST",
      endpoint: `${api(config)}/contacts/v1/contact/createOrUpdate/email/${traits.email}`,
      headers: { "Content-Type": "application/json" },
      params: {},
      body: { JSON: { properties } },
    },
    config,
  );
}

async function legacyTrack(event, destination, config) {
  if (!config.hubID) throw new DestinationError("Invalid hub id value provided in the destination configuration", 400);
  const params = dropNulls({
    _a: config.hubID,
    _n: event.event,
    _m: get(event, "properties.revenue") || get(event, "properties.value") || get(event, "properties.total"),
    id: externalIdOf(event, "hubspotId"),
    ...(await contactPayload(event, destination)),
  });
  const headers = { "Content-Type": "application/json" };
  if (privateApp(config)) headers.Authorization = `Bearer ${config.accessToken}`;
  return { method: "GET", endpoint: `${baseUrl(config.apiBaseUrl, TRACK_API)}/v1/event`, headers, params, body: {} };
}

// ---------- new API ----------

async function identify(event, destination, config) {
  const traits = first(event, ["traits", "context.traits"]);
  if (traits?.email && !isEmail(traits.email)) throw new DestinationError(`Email "${traits.email}" is invalid`, 400);
  if (!config.lookupField) throw new DestinationError("lookupField is a required field in webapp config", 400);
  let contactId = externalIdOf(event, "hsContactId");
  const base = api(config);
  if (!contactId) {
    const map = await contactProperties(destination);
    if (map[config.lookupField]?.unique) {
      const info = lookupFieldValue(event, config.lookupField);
      if (!info) {
        throw new DestinationError(
          `Identify:: lookupField "${config.lookupField}" value not found in traits. Email fallback also not available.`,
          400,
        );
      }
      const input = dropNulls({
        id: String(info.value),
        idProperty: info.fieldName,
        properties: await contactPayload(event, destination),
        objectWriteTraceId: isSet(event.messageId) ? String(event.messageId) : undefined,
      });
      return withAuth(
        {
          method: "POST",
          endpoint: `${base}/crm/v3/objects/contacts/batch/upsert`,
          headers: { "Content-Type": "application/json" },
          params: {},
          body: { JSON: { inputs: [input] } },
        },
        config,
      );
    }
    contactId = await searchContact(event, config);
  }
  const properties = await contactPayload(event, destination);
  const req = contactId
    ? { method: "PATCH", endpoint: `${base}/crm/v3/objects/contacts/${contactId}` }
    : { method: "POST", endpoint: `${base}/crm/v3/objects/contacts` };
  return withAuth({ ...req, headers: { "Content-Type": "application/json" }, params: {}, body: { JSON: { properties } } }, config);
}

const TRACK_PROPERTIES = [
  ["hs_asset_description", ["properties.assetDescription", "properties.hsAssetDescription"]],
  ["hs_asset_type", ["properties.assetType", "properties.hsAssetType"]],
  ["hs_campaign_id", "properties.campaignId"],
  ["hs_city", ["traits.address.city", "context.traits.address.city", "properties.address.city"]],
  ["hs_country", ["traits.address.country", "context.traits.address.country", "properties.address.country"]],
  ["hs_device_name", "context.device.name"],
  ["hs_element_class", ["properties.elementClass", "properties.hsElementClass"]],
  ["hs_element_id", ["properties.elementId", "properties.hsElementId"]],
];

function track(event, config) {
  const payload = {};
  const put = (k, v) => {
    if (v || v === 0 || v === false) payload[k] = v;
  };
  put("utk", first(event, ["traits.utk", "context.traits.utk", "properties.utk"]));
  put("email", first(event, ["traits.email", "context.traits.email", "properties.email", "context.externalId.0.id"]));
  put("occurredAt", first(event, ["properties.occurred_at", "timestamp", "originalTimestamp"]));
  put("objectId", first(event, ["traits.objectId", "context.traits.objectId", "properties.objectId"]));

  let name = get(event, "event");
  if (!name) throw new DestinationError("event name is required for track call", 400);
  if (!config.hubspotEvents) throw new DestinationError("Event and property mappings are required for track call", 400);
  if (typeof name !== "string") throw new DestinationError("Event is a required field and should be a string", 400);
  name = name.trim().toLowerCase();
  const mapping = (Array.isArray(config.hubspotEvents) ? config.hubspotEvents : []).find(
    (e) => e && e.rsEventName && e.rsEventName.trim().toLowerCase() === name && notEmpty(e.hubspotEventName),
  );
  if (!mapping) throw new DestinationError(`Event name '${name}' mappings are not configured in the destination`, 400);
  const properties = {};
  for (const p of Array.isArray(mapping.eventProperties) ? mapping.eventProperties : []) {
    if (!notEmpty(p?.from)) continue;
    const v = get(event, `properties.${p.from}`);
    if (notEmpty(v)) properties[p.to] = v;
  }
  for (const [k, paths] of TRACK_PROPERTIES) {
    const v = Array.isArray(paths) ? first(event, paths) : get(event, paths);
    if (v || v === 0 || v === false) properties[k] = v;
  }
  const body = dropNulls({ ...payload, eventName: mapping.hubspotEventName.trim(), properties });
  if (!body.email && !body.utk && !body.objectId) {
    throw new DestinationError("Either of email, utk or objectId is required for custom behavioral events", 400);
  }
  const headers = { "Content-Type": "application/json" };
  let endpoint = `${api(config)}/events/v3/send`;
  if (privateApp(config)) headers.Authorization = `Bearer ${config.accessToken}`;
  else endpoint = `${endpoint}?hapikey=${config.apiKey}`;
  return { method: "POST", endpoint, headers, params: {}, body: { JSON: body } };
}

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Message type is not present. Aborting message.", 400);
  validateConfig(config);
  const newApi = config.apiVersion === "newApi";
  if (event.type === "identify") {
    return newApi ? identify(event, destination, config) : legacyIdentify(event, destination, config);
  }
  if (event.type === "track") {
    return newApi ? track(event, config) : legacyTrack(event, destination, config);
  }
  throw new UnsupportedEventError(`Message type ${event.type} is not supported`);
}

// ---------- batching ----------

function kindOf(r) {
  const e = String(r.endpoint).split("?")[0];
  if (/\/contacts\/v1\/contact\/createOrUpdate\/email\//.test(e)) return "legacy";
  if (e.endsWith("/crm/v3/objects/contacts/batch/upsert")) return "upsert";
  if (r.method === "PATCH" && /\/crm\/v3\/objects\/contacts\/[^/]+$/.test(e)) return "update";
  if (r.method === "POST" && e.endsWith("/crm/v3/objects/contacts")) return "create";
  return "single";
}

function chunks(list, size) {
  const out = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

export function batch(requests) {
  const groups = { legacy: [], upsert: [], update: [], create: [], single: [] };
  requests.forEach((r, i) => groups[kindOf(r)].push(i));
  const out = [];
  const origin = (r) => String(r.endpoint).replace(/^(https?:\/\/[^/]+).*$/, "$1");
  const make = (r, path, body) => ({ method: "POST", endpoint: `${origin(r)}${path}`, headers: r.headers, params: r.params ?? {}, body });

  for (const chunk of chunks(groups.legacy, LEGACY_BATCH_MAX)) {
    const list = chunk.map((i) => {
      const props = requests[i].body?.JSON?.properties ?? [];
      const at = props.findIndex((p) => p.property === "email");
      return { email: props[at]?.value, properties: props.filter((_, j) => j !== at) };
    });
    out.push({ request: make(requests[chunk[0]], "/contacts/v1/contact/batch/", { JSON_ARRAY: list }), events: chunk });
  }
  for (const chunk of chunks(groups.create, CRM_BATCH_MAX)) {
    const inputs = [];
    for (const i of chunk) {
      const properties = requests[i].body?.JSON?.properties;
      const dup = inputs.find((x) => x.properties?.email === properties?.email);
      if (dup) dup.properties = properties;
      else inputs.push({ properties });
    }
    out.push({ request: make(requests[chunk[0]], "/crm/v3/objects/contacts/batch/create", { JSON: { inputs } }), events: chunk });
  }
  for (const chunk of chunks(groups.update, CRM_BATCH_MAX)) {
    const inputs = [];
    for (const i of chunk) {
      const id = String(requests[i].endpoint).split("?")[0].split("/").pop();
      const properties = requests[i].body?.JSON?.properties;
      const dup = inputs.find((x) => x.id === id);
      if (dup) dup.properties = properties;
      else inputs.push({ id, properties });
    }
    out.push({ request: make(requests[chunk[0]], "/crm/v3/objects/contacts/batch/update", { JSON: { inputs } }), events: chunk });
  }
  for (const chunk of chunks(groups.upsert, CRM_BATCH_MAX)) {
    const inputs = [];
    for (const i of chunk) {
      for (const input of requests[i].body?.JSON?.inputs ?? []) {
        const dup = inputs.find((x) => x.id === input.id && x.idProperty === input.idProperty);
        if (dup) dup.properties = { ...dup.properties, ...input.properties };
        else inputs.push({ ...input });
      }
    }
    out.push({ request: make(requests[chunk[0]], "/crm/v3/objects/contacts/batch/upsert", { JSON: { inputs } }), events: chunk });
  }
  for (const i of groups.single) out.push({ request: requests[i], events: [i] });
  // RudderStack orders its batches by their first job.
  return out.sort((a, b) => Math.min(...a.events) - Math.min(...b.events));
}

export function batchResponse(response, requests) {
  const { status } = response;
  const body = response.body && typeof response.body === "object" ? response.body : {};
  // Creates, updates and upserts go out through the CRM batch endpoints.
  const crm = ["upsert", "create", "update"].includes(kindOf(requests[0] ?? {}));
  if (crm && status >= 200 && status < 300) {
    const results = body.results ?? [];
    const errors = body.errors ?? [];
    if (results.length === 0 && errors.length === 0) {
      const error =
        "[HUBSPOT] Silent failure: HubSpot returned 2xx but the response indicates no records were processed (empty results and errors).";
      return requests.map(() => ({ status: 400, error }));
    }
  }
  if (status === 207) {
    const failed = new Map();
    for (const e of Array.isArray(body.errors) ? body.errors : []) {
      for (const id of e?.context?.objectWriteTraceId ?? []) if (id) failed.set(String(id), e.message ?? "Unknown error from HubSpot");
    }
    return requests.map((r) => {
      const ids = (r.body?.JSON?.inputs ?? []).map((x) => x.objectWriteTraceId).filter(isSet);
      const hit = ids.find((id) => failed.has(String(id)));
      return hit !== undefined ? { status: 400, error: failed.get(String(hit)) } : { status: 200 };
    });
  }
  if (status === 400 && requests.length > 1) {
    return requests.map(() => ({ status: 500, error: `HubSpot refused the batch: ${JSON.stringify(response.body)}` }));
  }
  return requests.map(() => null);
}
