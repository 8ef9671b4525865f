// ActiveCampaign through its API v3 (https://developers.activecampaign.com/reference/overview)
// and event tracking endpoint, as RudderStack's ACTIVE_CAMPAIGN destination maps events.
// Config (RudderStack's keys): apiUrl (the account's API URL, e.g.
// https://<account>.api-us1.com, required), apiKey (required, sent as the Api-Token
// header), actid and eventKey (event tracking account id and key, required for track and
// screen). Keel extension: apiBaseUrl replaces both apiUrl and https://trackcmp.net.
// Mapping:
//   identify → POST {apiUrl}/api/3/contact/sync {contact: {email (required), phone,
//     firstName, lastName, fieldValues: [{field, value}]}}: fieldValues from
//     traits.fieldInfo ({title: value}, titles matched to the account's custom fields;
//     array values as "||a||b||"). traits.tags (an array of tag names) and traits.lists
//     ([{id, status: "subscribe" | "unsubscribe"}]) add requests POST /api/3/contactTags
//     {contactTag: {contact, tag}} per tag and POST /api/3/contactLists {contactList: {list,
//     contact, status: "1" | "2"}} per list, before the contact sync.
//   page → POST {apiUrl}/api/3/siteTrackingDomains {siteTrackingDomain: {name}}: the host
//     (without "www.") of properties.domain / properties.url / context.page.url /
//     referring domains.
//   track, screen → POST https://trackcmp.net/event (form) {actid, key: eventKey, event
//     (event, else properties.name), eventdata (properties.eventData, else
//     properties.name), visit: {"email": context.traits.email}}.
//   group, alias → skipped (not supported).
// Lookups (fetchV2, during the transformation, as RudderStack does them):
//   identify with tags or lists: POST /api/3/contact/sync (the contact's id); the account's
//     tags (GET /api/3/tags?limit=100, every page) and POST /api/3/tags for the missing ones.
//   identify with fieldInfo: the account's fields (GET /api/3/fields?limit=100, every page).
//   track / screen: the event names (GET /api/3/eventTrackingEvents, every page) and
//     POST /api/3/eventTrackingEvents {eventTrackingEvent: {name}} when the event is new.
//   Tags, fields and event names are cached 10 minutes per account. A lookup that fails
//   throws with ActiveCampaign's error status (429 and 5xx are retried), or 500 (retried)
//   for network failures and 2xx answers that are not what was asked for, such as an HTML
//   login page.
// No batching (each call takes one contact or event).
// Departures from RudderStack: the contact tag and list memberships are sent through the
// router as the event's requests instead of during the transformation, and the first
// contact sync is made only when tags or lists need the contact's id; lookups read every
// page and are cached; visit is left out when the event has no email (RudderStack sends
// {"email":"undefined"}); a missing actid / eventKey is refused for track and screen;
// fieldValues follow the fieldInfo keys in alphabetical order (Keel keeps no JSON key
// order; RudderStack follows the event's); an event list lookup answered 200 with
// something other than a list (an HTML login page) fails at once (RudderStack reads it as
// empty and fails creating the event, also with 500).
import { DestinationError, UnsupportedEventError, baseUrl, isSet } from "keel";

const TRACK_ORIGIN = "https://trackcmp.net";
const CACHE_MS = 10 * 60 * 1000;
const PAGE = 100;

// ---------- helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of String(path).split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

const present = (v) => Boolean(v) || v === 0 || v === false;

function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (present(v)) return v;
  }
  return null;
}

const PATHS = {
  emailOnly: ["traits.email", "context.traits.email", "properties.email"],
  phone: ["traits.phone", "context.traits.phone", "properties.phone"],
  firstName: ["traits.firstName", "traits.firstname", "traits.first_name", "context.traits.firstName", "context.traits.firstname", "context.traits.first_name"],
  lastName: ["traits.lastName", "traits.lastname", "traits.last_name", "context.traits.lastName", "context.traits.lastname", "context.traits.last_name"],
  domain: ["properties.domain", "properties.url", "context.page.url", "properties.referring_domain", "context.page.referring_domain"],
};

const apiOrigin = (config) => baseUrl(config.apiBaseUrl, config.apiUrl);
const trackOrigin = (config) => baseUrl(config.apiBaseUrl, TRACK_ORIGIN);
const jsonHeaders = (config) => ({ "Content-Type": "application/json", "Api-Token": config.apiKey });
const cacheKey = (config) => `${apiOrigin(config)} ${config.apiKey}`;

function traitOf(event, key) {
  return get(event, `context.traits.${key}`) || get(event, `traits.${key}`);
}

// ---------- lookups ----------

const caches = { tags: new Map(), fields: new Map(), events: new Map() };

function cached(kind, config) {
  const hit = caches[kind].get(cacheKey(config));
  return hit && Date.now() - hit.at < CACHE_MS ? hit.value : null;
}

function remember(kind, config, value) {
  caches[kind].set(cacheKey(config), { at: Date.now(), value });
  return value;
}

function failStatus(status) {
  return status >= 400 && status < 600 ? status : 500;
}

function failure(what, res) {
  const body = typeof res.body === "string" ? res.body : JSON.stringify(res.body);
  return new DestinationError(`${what} (${res.status}, ${body})`, failStatus(res.status));
}

async function call(url, options, what) {
  try {
    return await fetchV2(url, options);
  } catch (e) {
    throw new DestinationError(`${what}: ${e.message}`, 500);
  }
}

const ok = (res) => res.status >= 200 && res.status < 300 && res.body && typeof res.body === "object";

// Every page of a list endpoint: the items under `key`.
async function listAll(config, path, key, what, headers) {
  const items = [];
  let offset = 0;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const url = `${apiOrigin(config)}${path}${sep}limit=${PAGE}${offset ? `&offset=${offset}` : ""}`;
    const res = await call(url, { method: "GET", headers }, what);
    if (!ok(res) || !Array.isArray(res.body[key])) throw failure(what, res);
    items.push(...res.body[key]);
    const total = Number.parseInt(res.body.meta?.total, 10);
    offset += PAGE;
    if (!(total > offset) || res.body[key].length === 0) break;
  }
  return items;
}

async function syncContact(config, contact) {
  const res = await call(
    `${apiOrigin(config)}/api/3/contact/sync`,
    { method: "POST", headers: jsonHeaders(config), body: JSON.stringify({ contact }) },
    "Failed to create new contact",
  );
  const id = ok(res) ? res.body.contact?.id : undefined;
  if (!isSet(id)) throw failure("Failed to create new contact", res);
  return id;
}

// tag name → id, creating the tags the account does not have.
async function tagIds(config, names) {
  let map = cached("tags", config);
  if (!map) {
    map = {};
    for (const t of await listAll(config, "/api/3/tags", "tags", "Failed to fetch already created tags", jsonHeaders(config))) {
      map[t.tag] = t.id;
    }
    remember("tags", config, map);
  }
  // The account's tags first, then the ones created, as RudderStack orders them.
  const ids = names.filter((name) => isSet(map[name])).map((name) => map[name]);
  for (const name of names) {
    if (isSet(map[name])) continue;
    const res = await call(
      `${apiOrigin(config)}/api/3/tags`,
      { method: "POST", headers: jsonHeaders(config), body: JSON.stringify({ tag: { tag: name, tagType: "contact", description: "" } }) },
      "Failed to create new tag",
    );
    const id = ok(res) ? res.body.tag?.id : undefined;
    if (!isSet(id)) throw failure("Failed to create new tag", res);
    map[name] = id;
    ids.push(id);
  }
  return ids;
}

async function fieldMap(config) {
  const hit = cached("fields", config);
  if (hit) return hit;
  const map = {};
  for (const f of await listAll(config, "/api/3/fields", "fields", "Failed to get existing field data", { "Api-Token": config.apiKey })) {
    map[f.title] = f.id;
  }
  return remember("fields", config, map);
}

async function ensureEvent(config, name) {
  let names = cached("events", config);
  if (!names) {
    const list = await listAll(config, "/api/3/eventTrackingEvents", "eventTrackingEvents", "Failed to retrieve events", {
      "Api-Token": config.apiKey,
    });
    names = remember("events", config, new Set(list.map((e) => e.name)));
  }
  if (names.has(name)) return;
  const res = await call(
    `${apiOrigin(config)}/api/3/eventTrackingEvents`,
    { method: "POST", headers: jsonHeaders(config), body: JSON.stringify({ eventTrackingEvent: { name } }) },
    "Unable to create event. Aborting",
  );
  if (res.status !== 201 || !ok(res)) throw failure("Unable to create event. Aborting", res);
  names.add(name);
}

// ---------- identify ----------

async function identify(event, config) {
  const contact = {};
  const email = first(event, PATHS.emailOnly);
  if (!present(email)) throw new DestinationError('Missing required value from "emailOnly"', 400);
  contact.email = email;
  for (const key of ["phone", "firstName", "lastName"]) {
    const v = first(event, PATHS[key]);
    if (present(v)) contact[key] = v;
  }
  const tags = traitOf(event, "tags");
  const tagNames = Array.isArray(tags) ? tags : [];
  const listInfo = traitOf(event, "lists");
  const lists = (Array.isArray(listInfo) ? listInfo : listInfo ? [listInfo] : []).filter(
    (l) => l && (l.status === "subscribe" || l.status === "unsubscribe"),
  );
  const out = [];
  if (tagNames.length > 0 || lists.length > 0) {
    const contactId = await syncContact(config, { ...contact });
    for (const tag of tagNames.length > 0 ? await tagIds(config, tagNames) : []) {
      out.push(request(config, "/api/3/contactTags", { contactTag: { contact: contactId, tag } }));
    }
    for (const l of lists) {
      out.push(
        request(config, "/api/3/contactLists", {
          contactList: { list: l.id, contact: contactId, status: l.status === "subscribe" ? "1" : "2" },
        }),
      );
    }
  }
  const fieldInfo = traitOf(event, "fieldInfo");
  const fieldValues = [];
  if (fieldInfo && typeof fieldInfo === "object") {
    const map = await fieldMap(config);
    for (const [title, value] of Object.entries(fieldInfo)) {
      if (!(title in map)) continue;
      fieldValues.push({ field: map[title], value: Array.isArray(value) ? `||${value.join("||")}||` : value });
    }
  }
  contact.fieldValues = fieldValues;
  out.push(request(config, "/api/3/contact/sync", { contact }));
  return out.length === 1 ? out[0] : out;
}

function request(config, path, body) {
  return { method: "POST", endpoint: `${apiOrigin(config)}${path}`, headers: jsonHeaders(config), params: {}, body: { JSON: body } };
}

// ---------- page ----------

const SPECIAL_SCHEMES = ["http", "https", "ftp", "ws", "wss", "file"];

// The host name of an absolute URL (WHATWG URL's hostname, for the usual cases; the
// isolate has no URL class), or null when `value` is not an absolute URL.
function hostnameOf(value) {
  const m = /^\s*([a-z][a-z0-9+.-]*):(\/\/)?([^/?#\\]*)/i.exec(String(value));
  if (!m) return null;
  const special = SPECIAL_SCHEMES.includes(m[1].toLowerCase());
  if (!special && !m[2]) return "";
  let host = m[3].includes("@") ? m[3].slice(m[3].lastIndexOf("@") + 1) : m[3];
  if (host.startsWith("[")) host = host.slice(0, host.indexOf("]") + 1);
  else if (host.includes(":")) host = host.slice(0, host.indexOf(":"));
  if (special && m[1].toLowerCase() !== "file" && host === "") return null;
  return host.toLowerCase();
}

function page(event, config) {
  const value = first(event, PATHS.domain);
  if (!present(value)) throw new DestinationError(`Missing required value from ${JSON.stringify(PATHS.domain)}`, 400);
  const host = hostnameOf(value);
  if (host === null) throw new DestinationError(`Invalid URL: ${value}`, 400);
  return request(config, "/api/3/siteTrackingDomains", { siteTrackingDomain: { name: host.replace("www.", "") } });
}

// ---------- track / screen ----------

async function trackEvent(event, config) {
  const name = first(event, ["event", "properties.name"]);
  if (!present(name)) throw new DestinationError('Missing required value from ["event","properties.name"]', 400);
  if (!config.actid) throw new DestinationError("actid (event tracking account id) is required for track and screen calls", 400);
  if (!config.eventKey) throw new DestinationError("eventKey (event tracking key) is required for track and screen calls", 400);
  await ensureEvent(config, String(name));
  const form = { event: name, actid: config.actid, key: config.eventKey };
  const eventdata = get(event, "properties.eventData") || get(event, "properties.name");
  if (present(eventdata)) form.eventdata = eventdata;
  const email = get(event, "context.traits.email");
  if (isSet(email)) form.visit = `{"email":"${email}"}`;
  return {
    method: "POST",
    endpoint: `${trackOrigin(config)}/event`,
    headers: { "Content-Type": "application/x-www-form-urlencoded", "Api-Token": config.apiKey },
    params: {},
    body: { FORM: form },
  };
}

// ---------- entry point ----------

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Message Type is not present. Aborting message.", 400);
  const type = String(event.type).toLowerCase();
  if (!["identify", "page", "screen", "track"].includes(type)) {
    throw new UnsupportedEventError(`Message type ${type} not supported`);
  }
  if (!config.apiUrl) throw new DestinationError("apiUrl (the account's API URL) is required", 400);
  if (!config.apiKey) throw new DestinationError("apiKey is required", 400);
  if (type === "identify") return identify(event, config);
  if (type === "page") return page(event, config);
  return trackEvent(event, config);
}
