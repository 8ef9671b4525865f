// Intercom through its REST API (https://developers.intercom.com/docs/references/rest-api/),
// as RudderStack's INTERCOM destination maps identify, track and group calls.
// Config (RudderStack's keys): apiKey (access token, required), apiVersion ("v2", the
// default: Intercom API 2.10 contacts; "v1": the legacy 1.4 users API), apiServer
// ("standard" | "eu" | "au": https://api.intercom.io, https://api.eu.intercom.io,
// https://api.au.intercom.io; v1 always uses https://api.intercom.io), sendAnonymousId
// (anonymousId as the user id when there is no userId), updateLastRequestAt (v1, default
// true). Keel extension: apiBaseUrl replaces the origin (every region).
// Auth and headers: `Authorization: Bearer <apiKey>`, Accept / Content-Type JSON,
// `Intercom-Version: 2.10` (v2) or `1.4` (v1), `User-Agent: RudderStack`.
// Lookup field: integrations.INTERCOM.lookup (default "email") names the contact attribute
// searched for, and is never sent as a custom attribute.
// Lookups (fetchV2, during the transformation, as RudderStack does them):
//   v2 identify / group: POST /contacts/search {query: {operator, value: [{field, operator:
//     "=", value}]}} on the lookup field (email lower-cased) OR external_id (the userId).
//     Keel extension: an external id `{type: "intercomContactId", id}` in
//     context.externalId names the contact and skips the search.
//   group with a contact to attach or tags to add: POST /companies (the company upsert,
//     whose answer gives Intercom's company id).
//   v2 identify whose traits.company has remove: true: GET /companies?company_id= (or
//     ?name=) for the company to detach.
//   A failed lookup throws with Intercom's status (429 and 5xx → retried, 4xx → dead-letter;
//   404 becomes 400, as in RudderStack).
// Mapping:
//   v2 identify → PUT /contacts/{id} when the search found the contact, else POST /contacts
//     {external_id, email, phone, avatar, name, role, owner_id, signed_up_at, last_seen_at,
//     unsubscribed_from_emails, custom_attributes (context.traits minus reserved ones,
//     flattened with "_")}; email or userId required. With traits.company.remove, a
//     DELETE /contacts/{id}/companies/{companyId} request comes first.
//   v1 identify → POST /users {user_id, email, phone, name, signed_up_at,
//     last_seen_user_agent, update_last_request_at, companies (traits.company), custom
//     attributes flattened with "."}.
//   track → POST /events {event_name, user_id, email, metadata (properties flattened, money
//     {amount, currency} and rich link {url, value} objects kept), created_at (v2) or
//     created (v1), id (v2)}.
//   v2 group → company {company_id: groupId, name, website, plan, size, industry,
//     monthly_spend, remote_created_at, custom_attributes}: POST /companies when no contact
//     was found and there are no tags; else the company is upserted during the
//     transformation and the event's requests are POST /contacts/{id}/companies {id} (found
//     contact) and POST /tags {name, companies: [{id}]} per context.traits.tags entry.
//   v1 group → POST /companies, then POST /users {user_id, email, companies: [{company_id,
//     name}]} when the event names a user, then POST /tags per tag.
//   rETL events (context.mappedToDestination) send their traits as the payload, with the
//     first external id's identifierType set to its id.
//   page, screen, alias → skipped (not supported).
// No batching: Intercom's contact, event and company endpoints take one object per call.
// Departures from RudderStack: RudderStack makes every group request (and the identify
// detach) itself during the transformation and tells its server to send nothing; Keel sends
// the final requests through the router instead and only calls what it needs an id from.
// The "email or userId required" and "groupId required" checks run before the contact
// search (RudderStack searches first). A company `size` that is not a number is left out
// (RudderStack sends null).
import { DestinationError, UnsupportedEventError, baseUrl, md5, isSet } from "keel";

const ORIGINS = {
  standard: "https://api.intercom.io",
  eu: "https://api.eu.intercom.io",
  au: "https://api.au.intercom.io",
};

const RESERVED = {
  v1User: ["userId", "email", "phone", "name", "createdAt", "firstName", "lastName", "firstname", "lastname", "company"],
  v2User: [
    "userId", "role", "email", "phone", "name", "avatar", "company", "ownerId", "lastName", "lastname", "firstName",
    "firstname", "createdAt", "timestamp", "lastSeenAt", "originalTimestamp", "unsubscribedFromEmails",
  ],
  v1Company: ["remoteCreatedAt", "monthlySpend", "industry", "website", "size", "plan", "name", "userId"],
  v2Company: [
    "tags", "size", "plan", "name", "email", "userId", "website", "industry", "segments", "userCount", "createdAt",
    "sessionCount", "monthlySpend", "remoteCreatedAt",
  ],
};
const RESERVED_COMPANY_PROPERTIES = ["id", "name", "industry", "remove"];

// ---------- helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of String(path).split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

// The first value that is set (json-template's `??` chain).
function coalesce(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (isSet(v)) return v;
  }
  return undefined;
}

// The first truthy value (or 0 / false): RudderStack's getValueFromMessage.
function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v || v === 0 || v === false) return v;
  }
  return null;
}

const either = (event, key) => get(event, `traits.${key}`) || get(event, `context.traits.${key}`);

function dropNulls(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (isSet(v) && !Number.isNaN(v)) out[k] = v;
  return out;
}

function toSeconds(v) {
  const ms = new Date(v).getTime();
  return ms ? Math.floor(ms / 1000) : undefined;
}

// RudderStack's flattenJson: nested keys joined by `sep`, array items as `key[i]`.
function flatten(data, sep = ".") {
  const out = {};
  const walk = (cur, prop) => {
    if (Object(cur) !== cur) out[prop] = cur;
    else if (Array.isArray(cur)) {
      cur.forEach((item, i) => walk(item, `${prop}[${i}]`));
      if (cur.length === 0) out[prop] = [];
    } else {
      const keys = Object.keys(cur);
      for (const k of keys) walk(cur[k], prop ? `${prop}${sep}${k}` : k);
      if (keys.length === 0 && prop) out[prop] = {};
    }
  };
  walk(data, "");
  return out;
}

const PATHS = {
  userIdOnly: ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"],
  email: ["traits.email", "context.traits.email", "properties.email", "context.externalId.0.id"],
  phone: ["traits.phone", "context.traits.phone", "properties.phone"],
  avatar: ["traits.avatar", "context.traits.avatar", "traits.avatarURL", "context.traits.avatarURL", "traits.avatar_URL", "context.traits.avatar_URL"],
  firstName: ["traits.firstName", "traits.firstname", "traits.first_name", "context.traits.firstName", "context.traits.firstname", "context.traits.first_name"],
  lastName: ["traits.lastName", "traits.lastname", "traits.last_name", "context.traits.lastName", "context.traits.lastname", "context.traits.last_name"],
  name: ["traits.name", "context.traits.name"],
  website: ["traits.website", "context.traits.website", "properties.website"],
  timestamp: ["timestamp", "originalTimestamp"],
  groupId: ["groupId", "traits.groupId"],
};

// RudderStack's email paths; the last one (the first external id) is skipped when it is
// Keel's intercomContactId.
function emailOf(event, pick) {
  const paths = get(event, "context.externalId.0.type") === "intercomContactId" ? PATHS.email.slice(0, 3) : PATHS.email;
  return pick(event, paths);
}

function integrationsObj(event) {
  const i = event.integrations ?? {};
  return i.INTERCOM || i.intercom || i.Intercom || null;
}

function lookupFieldOf(event) {
  const lookup = integrationsObj(event)?.lookup;
  return isSet(lookup) ? lookup : "email";
}

function externalIdOf(event, type) {
  const list = event.context?.externalId;
  if (!Array.isArray(list)) return null;
  const found = list.find((e) => e?.type === type);
  return found ? found.id : null;
}

const versionOf = (config) => (isSet(config.apiVersion) ? config.apiVersion : "v2");

function origin(config) {
  const fallback = versionOf(config) === "v1" ? ORIGINS.standard : ORIGINS[config.apiServer] ?? ORIGINS.standard;
  return baseUrl(config.apiBaseUrl, fallback);
}

function headers(config, version = versionOf(config)) {
  return {
    "Content-Type": "application/json",
    Authorization: `Bearer ${config.apiKey}`,
    Accept: "application/json",
    "Intercom-Version": version === "v1" ? "1.4" : "2.10",
    "User-Agent": "RudderStack",
  };
}

function request(config, method, path, body, version) {
  const r = { method, endpoint: `${origin(config)}${path}`, headers: headers(config, version), params: {}, body: {} };
  if (body !== undefined) r.body = { JSON: body };
  return r;
}

function nameOf(event) {
  const name = get(event, "traits.name") || get(event, "context.traits.name");
  if (name) return name;
  const firstName = first(event, PATHS.firstName);
  const lastName = first(event, PATHS.lastName);
  if (firstName && lastName) return `${firstName} ${lastName}`;
  return firstName || lastName || undefined;
}

// Custom attributes without the reserved names and the lookup field, flattened.
function customAttributes(attributes, kind, config, event) {
  const v1 = versionOf(config) === "v1";
  const lookupField = lookupFieldOf(event);
  const reserved =
    kind === "user"
      ? [...(v1 ? RESERVED.v1User : RESERVED.v2User), lookupField]
      : [...(v1 ? RESERVED.v1Company : RESERVED.v2Company), ...(lookupField !== "email" ? [lookupField] : [])];
  const attrs = { ...(attributes ?? {}) };
  for (const key of reserved) delete attrs[key];
  if (Object.keys(attrs).length === 0) return undefined;
  const flat = v1 ? flatten(attrs) : flatten(attrs, "_");
  return Object.keys(flat).length === 0 ? undefined : flat;
}

function companiesOf(customAttrs) {
  const company = customAttrs?.company;
  if (!company) return undefined;
  if (!(company.name || company.id)) return [];
  const attrs = {};
  for (const [k, v] of Object.entries(company)) {
    if (RESERVED_COMPANY_PROPERTIES.includes(k)) continue;
    if (isSet(v)) attrs[k] = v !== Object(v) ? v : JSON.stringify(v);
  }
  return [
    dropNulls({
      company_id: company.id || md5(company.name),
      custom_attributes: attrs,
      name: company.name,
      industry: company.industry,
      remove: company.remove,
    }),
  ];
}

// rETL: the traits (with the first external id set on them) are the payload. As in
// RudderStack, the payload's external_id is set on the event's traits too, so the contact
// search that follows looks the contact up by it.
function retlPayload(event, config) {
  const traits = first(event, ["traits", "context.traits"]) ?? {};
  const ext = get(event, "context.externalId.0");
  if (ext && isSet(ext.identifierType)) traits[ext.identifierType] = ext.id;
  traits.external_id = versionOf(config) === "v2" && !traits.email ? traits.user_id : null;
  return { ...traits };
}

// ---------- lookups ----------

// As RudderStack's intercomErrorHandler: 404 is the event's fault (400), other errors keep
// Intercom's status; an answer that is not an error status fails with 500.
function failStatus(status) {
  if (status === 404) return 400;
  return status >= 400 && status < 600 ? status : 500;
}

async function call(url, options, what) {
  let res;
  try {
    res = await fetchV2(url, options);
  } catch (e) {
    throw new DestinationError(`${what}: ${e.message}`, 500);
  }
  return res;
}

async function searchContact(event, config) {
  const known = externalIdOf(event, "intercomContactId");
  if (isSet(known) && known !== "") return String(known);
  const lookups = [];
  const add = (field, value) => {
    if (value) lookups.push({ field, value });
  };
  const mapped = event.context?.mappedToDestination;
  if (mapped && get(event, "traits.external_id") && !get(event, "traits.email")) {
    add("external_id", event.traits.external_id);
  } else {
    const field = lookupFieldOf(event);
    let value = field === "email" ? emailOf(event, first) : PATHS[field] ? first(event, PATHS[field]) : null;
    value = value || get(event, `context.traits.${field}`);
    if (field === "email" && typeof value === "string") value = value.toLowerCase();
    add(field, value);
    if (field !== "external_id") add("external_id", first(event, PATHS.userIdOnly));
  }
  if (lookups.length === 0) return null;
  if (lookups.some((l) => !["string", "number", "boolean"].includes(typeof l.value))) return null;
  const body = {
    query: {
      operator: lookups.length > 1 ? "OR" : "AND",
      value: lookups.map((l) => ({ field: l.field, operator: "=", value: l.value })),
    },
  };
  const res = await call(
    `${origin(config)}/contacts/search`,
    { method: "POST", headers: headers(config, "v2"), body: JSON.stringify(body) },
    "Unable to search contact",
  );
  if (res.status >= 200 && res.status < 300) {
    const contacts = res.body?.data;
    return Array.isArray(contacts) && contacts.length > 0 ? contacts[0]?.id ?? null : null;
  }
  throw new DestinationError(
    `Unable to search contact due to : ${JSON.stringify(res.body?.errors ?? res.body)}`,
    failStatus(res.status),
  );
}

async function upsertCompany(payload, config) {
  const res = await call(
    `${origin(config)}/companies`,
    { method: "POST", headers: headers(config), body: JSON.stringify(dropNulls(payload)) },
    "Unable to Create or Update Company",
  );
  if (res.status >= 200 && res.status < 300 && res.body?.id) return res.body.id;
  if (res.status >= 200 && res.status < 300) throw new DestinationError("Unable to create or update company", 400);
  throw new DestinationError(
    `Unable to Create or Update Company due to : ${JSON.stringify(res.body?.errors ?? res.body)}`,
    failStatus(res.status),
  );
}

async function companyIdOf(company, config) {
  if (!company.id && !company.name) return undefined;
  const query = company.id ? `company_id=${encodeURIComponent(company.id)}` : `name=${encodeURIComponent(company.name)}`;
  const res = await call(
    `${origin(config)}/companies?${query}`,
    { method: "GET", headers: headers(config) },
    "Unable to get company id",
  );
  if (res.status >= 200 && res.status < 300) return res.body?.id;
  throw new DestinationError(`Unable to get company id due to : ${JSON.stringify(res.body)}`, failStatus(res.status));
}

// ---------- identify ----------

async function identifyV2(event, config) {
  const mapped = Boolean(event.context?.mappedToDestination);
  let payload;
  if (mapped) payload = retlPayload(event, config);
  else {
    payload = {
      external_id: coalesce(event, PATHS.userIdOnly),
      email: emailOf(event, coalesce),
      phone: coalesce(event, PATHS.phone),
      avatar: coalesce(event, PATHS.avatar),
      last_seen_at: toSeconds(get(event, "context.traits.lastSeenAt")),
      role: either(event, "role"),
      signed_up_at: toSeconds(either(event, "createdAt")),
      owner_id: Number(either(event, "ownerId")) || undefined,
      unsubscribed_from_emails: either(event, "unsubscribedFromEmails"),
    };
  }
  payload.name = nameOf(event);
  payload.custom_attributes = customAttributes(
    (mapped ? get(event, "traits.custom_attributes") : get(event, "context.traits")) || {},
    "user",
    config,
    event,
  );
  if (!payload.external_id && config.sendAnonymousId && event.anonymousId) payload.external_id = event.anonymousId;
  if (!payload.external_id && !payload.email) {
    throw new DestinationError("Either email or userId is required for Identify call", 400);
  }
  const contactId = await searchContact(event, config);
  const out = [];
  const company = get(event, "traits.company") || get(event, "context.traits.company");
  if (contactId && company?.remove) {
    const companyId = await companyIdOf(company, config);
    if (companyId) {
      out.push(request(config, "DELETE", `/contacts/${contactId}/companies/${companyId}`));
    }
  }
  out.push(
    contactId
      ? request(config, "PUT", `/contacts/${contactId}`, dropNulls(payload))
      : request(config, "POST", "/contacts", dropNulls(payload)),
  );
  return out.length === 1 ? out[0] : out;
}

function identifyV1(event, config) {
  const mapped = Boolean(event.context?.mappedToDestination);
  let payload = mapped
    ? retlPayload(event, config)
    : {
        user_id: coalesce(event, PATHS.userIdOnly),
        email: emailOf(event, coalesce),
        phone: coalesce(event, PATHS.phone),
        signed_up_at: toSeconds(either(event, "createdAt")),
        last_seen_user_agent: get(event, "context.userAgent"),
      };
  if (!mapped && !payload.user_id && config.sendAnonymousId) payload.user_id = event.anonymousId;
  payload = {
    ...payload,
    name: nameOf(event),
    custom_attributes: event.traits || get(event, "context.traits") || {},
    update_last_request_at: typeof config.updateLastRequestAt === "boolean" ? config.updateLastRequestAt : true,
  };
  payload.companies = companiesOf(payload.custom_attributes);
  payload.custom_attributes = mapped ? undefined : customAttributes(payload.custom_attributes, "user", config, event);
  if (!payload.user_id && config.sendAnonymousId && event.anonymousId) payload.user_id = event.anonymousId;
  if (!payload.user_id && !payload.email) {
    throw new DestinationError("Either of `email` or `userId` is required for Identify call", 400);
  }
  return request(config, "POST", "/users", dropNulls(payload));
}

// ---------- track ----------

function track(event, config) {
  const v1 = versionOf(config) === "v1";
  let payload;
  if (event.context?.mappedToDestination) payload = retlPayload(event, config);
  else {
    const timestamp = coalesce(event, PATHS.timestamp);
    payload = {
      event_name: event.event,
      user_id: coalesce(event, PATHS.userIdOnly),
      email: emailOf(event, coalesce),
      metadata: event.properties,
    };
    if (v1) payload.created = toSeconds(timestamp);
    else {
      payload.id = get(event, "properties.id") || get(event, "traits.id");
      payload.created_at = toSeconds(timestamp);
    }
    if (!payload.user_id && config.sendAnonymousId) payload.user_id = event.anonymousId;
  }
  if (payload.metadata) {
    const reserved = {};
    const rest = {};
    for (const [k, v] of Object.entries(payload.metadata)) {
      const special =
        v && typeof v === "object" && (("amount" in v && "currency" in v) || ("url" in v && "value" in v));
      if (special) reserved[k] = v;
      else rest[k] = v;
    }
    payload = { ...payload, metadata: { ...reserved, ...flatten(rest) } };
  }
  if (!payload.event_name) throw new DestinationError("Event name is required for track call", 400);
  if (!payload.user_id && !payload.email) {
    throw new DestinationError("Either email or userId is required for Track call", 400);
  }
  return request(config, "POST", "/events", dropNulls(payload));
}

// ---------- group ----------

function companyPayload(event, config) {
  if (event.context?.mappedToDestination) return retlPayload(event, config);
  const size = either(event, "size");
  const spend = either(event, "monthlySpend");
  const created = either(event, "remoteCreatedAt");
  return {
    company_id: coalesce(event, PATHS.groupId),
    name: coalesce(event, PATHS.name),
    website: coalesce(event, PATHS.website),
    plan: either(event, "plan"),
    size: Number(size),
    industry: either(event, "industry"),
    monthly_spend: spend ? Number(spend) : undefined,
    remote_created_at: created ? Number(created) : undefined,
  };
}

function tagRequests(event, config, companyId) {
  const tags = get(event, "context.traits.tags");
  if (!Array.isArray(tags)) return [];
  return tags.map((name) => request(config, "POST", "/tags", { name, companies: [{ id: companyId }] }));
}

async function groupV2(event, config) {
  if (!event.groupId) throw new DestinationError("groupId is required for group call", 400);
  const payload = companyPayload(event, config);
  payload.custom_attributes = customAttributes(event.traits || {}, "company", config, event);
  const company = dropNulls(payload);
  const contactId = await searchContact(event, config);
  const hasTags = Array.isArray(get(event, "context.traits.tags")) && event.context.traits.tags.length > 0;
  if (!contactId && !hasTags) return request(config, "POST", "/companies", company);
  const companyId = await upsertCompany(company, config);
  const out = [];
  if (contactId) out.push(request(config, "POST", `/contacts/${contactId}/companies`, { id: companyId }));
  out.push(...tagRequests(event, config, companyId));
  return out.length === 1 ? out[0] : out;
}

function attachUser(event, config) {
  const email = get(event, "context.traits.email");
  let userId = event.userId;
  if (config.sendAnonymousId && !userId) userId = event.anonymousId;
  if (!userId && !email) return null;
  const body = {};
  if (userId) body.user_id = userId;
  if (email) body.email = email;
  const company = { company_id: event.groupId };
  if (get(event, "traits.name")) company.name = event.traits.name;
  body.companies = [company];
  return {
    method: "POST",
    endpoint: `${origin(config)}/users`,
    headers: headers(config, "v1"),
    params: {},
    body: { JSON: body },
  };
}

async function groupV1(event, config) {
  const payload = companyPayload(event, config);
  payload.custom_attributes = customAttributes(first(event, ["traits", "context.traits"]) || {}, "company", config, event);
  const company = dropNulls(payload);
  const out = [request(config, "POST", "/companies", company)];
  const attach = attachUser(event, config);
  if (attach) out.push(attach);
  const hasTags = Array.isArray(get(event, "context.traits.tags")) && event.context.traits.tags.length > 0;
  if (hasTags) out.push(...tagRequests(event, config, await upsertCompany(company, config)));
  return out.length === 1 ? out[0] : out;
}

// ---------- entry point ----------

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("message Type is not present. Aborting", 400);
  const type = String(event.type).toLowerCase();
  if (!["identify", "track", "group"].includes(type)) {
    throw new UnsupportedEventError(`message type ${type} is not supported`);
  }
  if (!config.apiKey) throw new DestinationError("Access Token is not present. Aborting", 400);
  const v1 = versionOf(config) === "v1";
  if (type === "identify") return v1 ? identifyV1(event, config) : identifyV2(event, config);
  if (type === "track") return track(event, config);
  return v1 ? groupV1(event, config) : groupV2(event, config);
}
