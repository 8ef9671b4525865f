// Mailchimp Marketing API 3.0 (https://mailchimp.com/developer/marketing/api/), as
// RudderStack's MC (MailChimp) destination maps identify and track calls onto an audience.
// Endpoints (origin https://<datacenterId>.api.mailchimp.com):
//   PUT  /3.0/lists/{audienceId}/members/{md5(email)}         identify (add or update member)
//   POST /3.0/lists/{audienceId}/members/{md5(email)}/events  track (member event)
//   POST /3.0/lists/{audienceId}?skip_merge_validation=…&skip_duplicate_check=false
//        batch subscribe {members, update_existing: true}   (batched identifies)
// Auth: HTTP Basic "apiKey:<apiKey>".
// Config (RudderStack's keys): apiKey, audienceId, datacenterId (all required),
// enableMergeFields (send traits as merge fields; also the batch's skip_merge_validation).
// Keel extension: apiBaseUrl replaces https://<datacenterId>.api.mailchimp.com.
// The audience is integrations.MailChimp.listId (or context.MailChimp.listId) when set,
// else audienceId.
// Mapping:
//   identify → {email_address, status, merge_fields}: email required; with
//     enableMergeFields, merge_fields has FNAME, LNAME, PHONE, BIRTHDAY (MM/DD), ADDRESS
//     ({addr1, addr2, city, state, zip, country}; addr1, city, state and zip all required
//     when any address field is given) and every other trait under its name upper-cased,
//     stripped of punctuation and cut to 10 characters. status: for a member Mailchimp
//     already has, integrations.MailChimp.subscriptionStatus else the member's current
//     status; for a new member "pending" when the audience uses double opt-in, else
//     "subscribed".
//   track → {name (event, 2 to 30 characters, spaces → "_"), properties (values as
//     strings), occurred_at (UTC, seconds), is_syncing (properties.isSyncing)}; email
//     required.
//   rETL identify (context.mappedToDestination): the traits are the member, with the first
//     external id (e.g. email_address) set on them.
//   page, screen, group, alias → skipped (not supported).
// Lookups (fetchV2, during the transformation, as RudderStack does them): identify reads the
// member (GET /3.0/lists/{audienceId}/members/{hash}; a failure counts as "not a member")
// and, for a new member, the audience (GET /3.0/lists/{audienceId}, its double_optin;
// cached 10 minutes per audience). A failed audience read throws with Mailchimp's status
// (429 and 5xx are retried).
// Batching: batch() merges identifies of one audience into batch subscribe requests (500
// members each, RudderStack's limit); track calls go one per request. batchResponse():
// members named in the answer's errors[] (by email_address) are dead-lettered.
// Departures from RudderStack: a lookup that fails at the network level is retried (5xx)
// instead of being read as "not a member" / 400; an event without a usable timestamp gets
// no occurred_at (RudderStack sends "Invalid date"); track properties that are objects are
// sent as JSON text with their keys in alphabetical order (Keel keeps no JSON key order;
// RudderStack keeps the event's).
import { DestinationError, UnsupportedEventError, baseUrl, base64, md5, isSet } from "keel";

export const maxBatchSize = 500;

const VALID_STATUSES = ["subscribed", "unsubscribed", "cleaned", "pending", "transactional"];
const ADDRESS_REQUIRED = ["addr1", "city", "state", "zip"];
const IDENTIFY_EXCLUSION = [
  "email", "firstName", "lastName", "FirstName", "LastName", "firstname", "lastname", "addr1", "city", "state", "zip",
  "phone", "address", "addressLine1", "addressLine2", "birthday",
];
const CACHE_MS = 10 * 60 * 1000;

// ---------- helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of String(path).split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

// RudderStack's getValueFromMessage: the first truthy value (or 0 / false).
function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v || v === 0 || v === false) return v;
  }
  return null;
}

const present = (v) => Boolean(v) || v === 0 || v === false;

function dropNulls(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (isSet(v)) out[k] = v;
  return out;
}

const PATHS = {
  email: ["traits.email", "context.traits.email", "properties.email", "context.externalId.0.id"],
  firstName: ["traits.firstName", "traits.firstname", "traits.first_name", "context.traits.firstName", "context.traits.firstname", "context.traits.first_name"],
  lastName: ["traits.lastName", "traits.lastname", "traits.last_name", "context.traits.lastName", "context.traits.lastname", "context.traits.last_name"],
  phone: ["traits.phone", "context.traits.phone", "properties.phone"],
  traits: ["traits", "context.traits"],
  timestamp: ["timestamp", "originalTimestamp"],
};

const addressPaths = (key, alt) => [
  `traits.${alt}`, `traits.address.${alt}`, `traits.merge_fields.ADDRESS.${key}`,
  `context.traits.${alt}`, `context.traits.address.${alt}`, `context.traits.merge_fields.ADDRESS.${key}`,
];
const ADDRESS_FIELDS = [
  ["addr1", addressPaths("addr1", "addressLine1")],
  ["addr2", addressPaths("addr2", "addressLine2")],
  ["city", addressPaths("city", "city")],
  ["state", addressPaths("state", "state")],
  ["zip", addressPaths("zip", "zip")],
  ["country", addressPaths("country", "country")],
];

function integrationsObj(event) {
  const i = event.integrations ?? {};
  return i.mailchimp || i.MailChimp || i.MAILCHIMP || null;
}

function audienceOf(event, config) {
  const listId = integrationsObj(event)?.listId;
  if (isSet(listId)) return listId;
  if (get(event, "context.MailChimp.listId")) return event.context.MailChimp.listId;
  return config.audienceId;
}

const origin = (config) => baseUrl(config.apiBaseUrl, `https://${config.datacenterId}.api.mailchimp.com`);
const listUrl = (config, audienceId) => `${origin(config)}/3.0/lists/${audienceId}`;
const memberUrl = (config, audienceId, email) => `${listUrl(config, audienceId)}/members/${md5(email)}`;
const auth = (config) => `Basic ${base64(`apiKey:${config.apiKey}`)}`;

function headers(config) {
  return { "Content-Type": "application/json", Authorization: auth(config) };
}

function checkStatus(payload) {
  if (payload.status && !VALID_STATUSES.includes(payload.status)) {
    throw new DestinationError("The status must be one of [subscribed, unsubscribed, cleaned, pending, transactional]", 400);
  }
}

// "YYYY-MM-DDTHH:mm:ss+00:00" of a date, undefined when it does not parse.
function utcSeconds(v) {
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return undefined;
  return `${d.toISOString().slice(0, 19)}+00:00`;
}

// Trait name → merge tag: word characters and spaces only, 10 at most, upper case.
function mergeTag(key) {
  let tag = key.replace(/[^\s\w]/gi, "");
  if (tag.length > 10) tag = tag.slice(0, 10);
  return tag.toUpperCase();
}

function validAddress(address) {
  const out = { ...address };
  const keys = Object.keys(out);
  if (keys.length === 0) return out;
  if (!ADDRESS_REQUIRED.every((k) => keys.includes(k))) {
    throw new DestinationError('For sending address information ["addr1", "city", "state", "zip"] fields are mandatory', 400);
  }
  for (const k of ADDRESS_REQUIRED) {
    const v = out[k];
    if (typeof v !== "string" || v.trim() === "") {
      throw new DestinationError(`To send as address information, ${k} field should be valid string`, 400);
    }
  }
  return out;
}

// ---------- lookups ----------

const optInCache = new Map(); // list url → {at, doubleOptIn}

function failStatus(status) {
  if (status === 429 || !(status >= 400 && status < 500)) return 500;
  return status;
}

async function memberStatus(config, audienceId, email) {
  let res;
  try {
    res = await fetchV2(memberUrl(config, audienceId, email), { method: "GET", headers: { Authorization: auth(config) } });
  } catch (e) {
    throw new DestinationError(`Mailchimp member lookup failed: ${e.message}`, 500);
  }
  if (!(res.status >= 200 && res.status < 300)) return { exists: false, status: null };
  if (res.body?.contact_id) return { exists: true, status: res.body.status ?? null };
  return { exists: false, status: null };
}

async function doubleOptIn(config, audienceId) {
  const url = listUrl(config, audienceId);
  const key = `${url} ${config.apiKey}`;
  const cached = optInCache.get(key);
  if (cached && Date.now() - cached.at < CACHE_MS) return cached.doubleOptIn;
  let res;
  try {
    res = await fetchV2(url, { method: "GET", headers: { Authorization: auth(config) } });
  } catch (e) {
    throw new DestinationError(`Mailchimp audience lookup failed: ${e.message}`, 500);
  }
  if (!(res.status >= 200 && res.status < 300)) {
    throw new DestinationError(
      `User does not have access to the requested operation: ${JSON.stringify(res.body)}`,
      failStatus(res.status),
    );
  }
  const value = Boolean(res.body?.double_optin);
  optInCache.set(key, { at: Date.now(), doubleOptIn: value });
  return value;
}

// ---------- identify ----------

async function identify(event, config) {
  const email = first(event, PATHS.email);
  if (!email) throw new DestinationError("Email is required for identify", 400);
  const audienceId = audienceOf(event, config);
  let payload;
  if (event.context?.mappedToDestination) {
    const traits = first(event, PATHS.traits) ?? {};
    const ext = get(event, "context.externalId.0");
    if (ext && isSet(ext.identifierType)) traits[ext.identifierType] = ext.id;
    payload = { ...traits };
    const address = get(payload, "merge_fields.ADDRESS");
    if (address && typeof address === "object" && Object.keys(address).length > 0) {
      payload.merge_fields = { ...payload.merge_fields, ADDRESS: validAddress(address) };
    }
  } else {
    const traits = first(event, PATHS.traits);
    const merge = {};
    const put = (k, v) => {
      if (present(v)) merge[k] = v;
    };
    put("FNAME", first(event, PATHS.firstName));
    put("LNAME", first(event, PATHS.lastName));
    put("PHONE", first(event, PATHS.phone));
    const birthday = first(event, ["traits.birthday", "context.traits.birthday"]);
    if (present(birthday)) merge.BIRTHDAY = String(birthday).slice(5).replace("-", "/");
    const address = {};
    for (const [k, paths] of ADDRESS_FIELDS) {
      const v = first(event, paths);
      if (present(v)) address[k] = v;
    }
    if (Object.keys(address).length > 0) merge.ADDRESS = validAddress(address);
    payload = { email_address: email };
    if (config.enableMergeFields === true) {
      const fields = { ...merge };
      if (traits && typeof traits === "object") {
        for (const key of Object.keys(traits)) {
          if (!IDENTIFY_EXCLUSION.includes(key)) fields[mergeTag(key)] = traits[key];
        }
      }
      payload.merge_fields = fields;
    }
    const member = await memberStatus(config, audienceId, email);
    if (!member.exists) {
      payload.status = (await doubleOptIn(config, audienceId)) ? "pending" : "subscribed";
    } else {
      const override = integrationsObj(event)?.subscriptionStatus;
      if (!isSet(override)) payload.status = member.status || "subscribed";
      else if (!VALID_STATUSES.includes(override)) {
        throw new DestinationError("The status must be one of [subscribed, unsubscribed, cleaned, pending, transactional]", 400);
      } else payload.status = override;
    }
  }
  payload = dropNulls(payload);
  checkStatus(payload);
  return {
    method: "PUT",
    endpoint: memberUrl(config, audienceId, email),
    headers: headers(config),
    params: {},
    body: { JSON: payload },
  };
}

// ---------- track ----------

function track(event, config) {
  const audienceId = audienceOf(event, config);
  const email = first(event, PATHS.email);
  if (!email) throw new DestinationError("Email is required for track", 400);
  if (!present(event.event)) throw new DestinationError('Missing required value from "event"', 400);
  const payload = { name: String(event.event) };
  if (present(event.properties)) payload.properties = event.properties;
  const timestamp = first(event, PATHS.timestamp);
  const syncing = get(event, "properties.isSyncing");
  if (present(syncing)) payload.is_syncing = syncing;
  if (payload.properties) {
    const props = {};
    for (const [k, v] of Object.entries(payload.properties)) {
      if (k === "isSyncing") continue;
      props[k] = typeof v === "string" ? v : JSON.stringify(v);
    }
    payload.properties = props;
  }
  if (!(payload.name.length >= 2 && payload.name.length <= 30)) {
    throw new DestinationError("Event name should be between 2 and 30 characters", 400);
  }
  payload.name = payload.name.trim().replace(/\s+/g, "_");
  const occurred = present(timestamp) ? utcSeconds(timestamp) : undefined;
  if (occurred) payload.occurred_at = occurred;
  return {
    method: "POST",
    endpoint: `${memberUrl(config, audienceId, email)}/events`,
    headers: headers(config),
    params: {},
    body: { JSON: payload },
  };
}

// ---------- entry point ----------

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.apiKey) throw new DestinationError("API Key not found. Aborting", 400);
  if (!config.audienceId) throw new DestinationError("Audience Id not found. Aborting", 400);
  if (!config.datacenterId) throw new DestinationError("DataCenter Id not found. Aborting", 400);
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  if (type === "identify") return identify(event, config);
  if (type === "track") return track(event, config);
  throw new UnsupportedEventError(`message type ${type} is not supported`);
}

// ---------- batching ----------

const MEMBER_PUT = /^(.*)\/3\.0\/lists\/([^/?]+)\/members\/[^/?]+$/;

export function batch(requests, destination) {
  const config = destination?.Config ?? {};
  const skipMergeValidation = isSet(config.enableMergeFields) ? config.enableMergeFields : false;
  const groups = new Map(); // list url → [indices]
  const singles = [];
  requests.forEach((r, i) => {
    const m = r.method === "PUT" ? MEMBER_PUT.exec(String(r.endpoint)) : null;
    if (!m) {
      singles.push({ request: r, events: [i] });
      return;
    }
    const key = `${m[1]}/3.0/lists/${m[2]}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  });
  const out = [];
  for (const [list, indices] of groups) {
    for (let at = 0; at < indices.length; at += maxBatchSize) {
      const chunk = indices.slice(at, at + maxBatchSize);
      out.push({
        request: {
          method: "POST",
          endpoint: `${list}?skip_merge_validation=${skipMergeValidation}&skip_duplicate_check=false`,
          headers: requests[chunk[0]].headers,
          params: {},
          body: { JSON: { members: chunk.map((i) => requests[i].body?.JSON), update_existing: true } },
        },
        events: chunk,
      });
    }
  }
  // Like RudderStack: the batched identifies first, then the track calls.
  return [...out, ...singles];
}

export function batchResponse(response, requests) {
  const body = response.body && typeof response.body === "object" ? response.body : null;
  if (!body || !(response.status >= 200 && response.status < 300) || !Array.isArray(body.errors)) {
    return requests.map(() => null);
  }
  const failed = new Map();
  for (const e of body.errors) {
    if (e?.email_address) failed.set(String(e.email_address).toLowerCase(), e.error ?? e.error_code ?? "rejected by Mailchimp");
  }
  return requests.map((r) => {
    const email = r.body?.JSON?.email_address;
    if (email && failed.has(String(email).toLowerCase())) {
      return { status: 400, error: failed.get(String(email).toLowerCase()) };
    }
    return null;
  });
}
