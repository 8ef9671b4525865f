// Zendesk Support through its REST API (https://developer.zendesk.com/api-reference/), as
// RudderStack's ZENDESK destination maps identify, track and group calls onto users, user
// events, organizations and organization memberships.
// Origin https://<domain>.zendesk.com, paths under /api/v2/.
// Auth: HTTP Basic "<email>/token:<apiToken>". Requests also carry RudderStack's Zendesk
// marketplace headers (X-Zendesk-Marketplace-Name / -Organization-Id / -App-Id).
// Config (RudderStack's keys): domain, email, apiToken (all required), createUsersAsVerified,
// searchByExternalId (identify: make the event's email the user's primary email),
// removeUsersFromOrganization (identify with traits.company {id, remove: true}: end the
// membership), sendGroupCallsWithoutUserId (group without userId: only upsert the
// organization), sourceName (the events' source, default "Rudder"; "zendesk" is refused).
// Keel extensions: apiBaseUrl replaces https://<domain>.zendesk.com; disableFieldCreation
// (default false) skips the user / organization field check and creation described below.
// Mapping:
//   identify (userId required) → POST /api/v2/users/create_or_update.json {user: {email,
//     name (required), organization_id, time_zone, phone, external_id (traits.userId, else
//     traits.id, else userId), user_fields (id: external_id, and every other non-object
//     trait), verified (createUsersAsVerified)}}. Before it, when asked for:
//     DELETE /api/v2/users/{id}/organization_memberships/{membershipId}.json (leave the
//     company) and, with searchByExternalId, DELETE /api/v2/users/{id}/identities/{id} (a
//     secondary identity that already has the new email) and PUT
//     /api/v2/users/{id}/identities/{primaryId} {identity: {type: "email", value,
//     verified}} (the primary email becomes the event's).
//   track (userId and traits.email required) → POST /api/v2/users/{zendeskUserId}/events
//     {event: {description, type: event, source, properties}, profile: {type, source,
//     identifiers: [{type: "email", value}]}}.
//   group → POST /api/v2/organization_memberships.json {organization_membership: {user_id,
//     organization_id}}; without userId and with sendGroupCallsWithoutUserId, POST
//     /api/v2/organizations/create_or_update.json {organization: {name, domain_names,
//     tags, external_id: groupId, url, deleted, organization_fields}} instead.
//   page, screen, alias → skipped (not supported).
// Lookups (fetchV2, during the transformation, as RudderStack does them):
//   identify / group: GET /api/v2/user_fields.json (organization_fields.json) and POST one
//     field {title, key, description, active, type: "text"} per new trait (cached 10
//     minutes; failures only logged) unless disableFieldCreation.
//   identify: with searchByExternalId, GET /api/v2/users/search.json?external_id= and
//     GET /api/v2/users/{id}/identities; with a company to leave, GET
//     /api/v2/users/search.json?query=<email> and the user's organization memberships
//     (failures skip the removal).
//   track: GET /api/v2/users/search.json?query=<email>, creating the user (POST
//     /api/v2/users/create_or_update.json) when there is none.
//   group (with a user): POST /api/v2/organizations/create_or_update.json (the
//     organization's id), the user's search (or creation, when context.traits has name and
//     email) and memberships (an existing membership of that organization is refused).
//   A failed lookup throws with Zendesk's status (429 and 5xx are retried).
// No batching.
// Departures from RudderStack: RudderStack creates or updates the identify's user (and
// deletes memberships / identities) itself during the transformation and tells its server
// to send nothing; Keel returns those requests for the router to send and, for
// searchByExternalId, finds the user by external_id instead of upserting it first. The
// field creation request carries type "text" (a field type Zendesk requires). The name /
// userId checks run before the field lookups.
import { DestinationError, UnsupportedEventError, baseUrl, base64, isSet } from "keel";

const CACHE_MS = 10 * 60 * 1000;
const MARKETPLACE = {
  "X-Zendesk-Marketplace-Name": "RudderStack",
  "X-Zendesk-Marketplace-Organization-Id": "3339",
  "X-Zendesk-Marketplace-App-Id": "263241",
};
const DEFAULT_FIELDS = {
  user_fields: ["email", "name", "organizationId", "timezone", "phone", "userId", "id"],
  organization_fields: ["name", "domainNames", "tags", "groupId", "url", "deleted"],
};
const USER_ID_PATHS = ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id", "anonymousId"];

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

function dropUndefined(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out;
}

const traitsOf = (event) => first(event, ["traits", "context.traits"]);
const api = (config) => `${baseUrl(config.apiBaseUrl, `https://${config.domain}.zendesk.com`)}/api/v2/`;

function authHeaders(config) {
  return {
    Authorization: `Basic ${base64(`${config.email}/token:${config.apiToken}`)}`,
    "Content-Type": "application/json",
  };
}

function request(config, method, url, body) {
  const r = { method, endpoint: url, headers: { ...authHeaders(config), ...MARKETPLACE }, params: {}, body: {} };
  if (body !== undefined) r.body = { JSON: body };
  return r;
}

function sourceName(config) {
  const { sourceName: name } = config;
  if (typeof name === "string" && name.trim().toLowerCase() === "zendesk") {
    throw new DestinationError("Invalid source name. The source name `zendesk` is not allowed.", 400);
  }
  return name || "Rudder";
}

function requireUserId(event) {
  if (!event.userId) throw new DestinationError(`UserId is a mandatory field for ${event.type}`, 400);
}

// ---------- lookups ----------

function failStatus(status) {
  if (status === 429 || !(status >= 400 && status < 500)) return 500;
  return status;
}

async function call(config, method, url, body, what) {
  const options = { method, headers: authHeaders(config) };
  if (body !== undefined) options.body = JSON.stringify(body);
  try {
    return await fetchV2(url, options);
  } catch (e) {
    throw new DestinationError(`${what}: ${e.message}`, 500);
  }
}

const ok = (res) => res.status >= 200 && res.status < 300;

const fieldCache = new Map(); // url → {at, keys: Set}

// Creates the user (organization) fields the traits need, as RudderStack does.
async function ensureFields(config, traits, kind) {
  if (config.disableFieldCreation === true || !traits || typeof traits !== "object") return;
  const url = `${api(config)}${kind}.json`;
  const key = `${url} ${config.email}`;
  let keys = fieldCache.get(key);
  if (!keys || Date.now() - keys.at >= CACHE_MS) {
    let res;
    try {
      res = await call(config, "GET", url, undefined, `checking ${kind}`);
    } catch (e) {
      log(`zendesk: ${e.message}`);
      return;
    }
    const fields = res.body && typeof res.body === "object" ? res.body[kind] : undefined;
    if (!ok(res) || !Array.isArray(fields)) {
      log(`zendesk: cannot read ${kind} (${res.status})`);
      return;
    }
    keys = { at: Date.now(), keys: new Set(fields.map((f) => f.key)) };
    fieldCache.set(key, keys);
  }
  const known = new Set([...keys.keys, ...DEFAULT_FIELDS[kind]]);
  const fresh = Object.keys(traits).filter((k) => !(known.has(k) || typeof traits[k] === "object"));
  const single = kind.slice(0, -1);
  for (const name of fresh) {
    const body = { [single]: { title: name, active: true, key: name, description: name, type: "text" } };
    try {
      const res = await call(config, "POST", url, body, `creating ${single}`);
      if (ok(res)) keys.keys.add(name);
      else log(`zendesk: failed to create ${single} ${name}: ${JSON.stringify(res.body)}`);
    } catch (e) {
      log(`zendesk: ${e.message}`);
    }
  }
}

// The Zendesk id of the user whose email is in the traits, or undefined.
async function userIdByEmail(config, traits) {
  const email = traits?.email || traits?.primaryEmail;
  if (!email) return undefined;
  const res = await call(config, "GET", `${api(config)}users/search.json?query=${encodeURIComponent(email)}`, undefined, "searching the user");
  if (!ok(res) || !res.body || res.body.count === 0) return undefined;
  return res.body.users?.[0]?.id;
}

async function createUser(event, config, traits) {
  const { name, email } = traits ?? {};
  const user = { name, external_id: first(event, USER_ID_PATHS), email };
  if (config.createUsersAsVerified) user.verified = true;
  const res = await call(config, "POST", `${api(config)}users/create_or_update.json`, { user }, "creating the user");
  const id = ok(res) ? res.body?.user?.id : undefined;
  if (!isSet(id)) {
    if (res.status === 429 || res.status >= 500) {
      throw new DestinationError(`Couldn't create user ${name}: ${res.status}`, 500);
    }
    throw new DestinationError(`Couldn't find user: ${name}`, 400);
  }
  return { id, email: res.body.user.email };
}

// ---------- identify ----------

function identifyPayload(event, config, traits) {
  const user = {};
  if (present(traits.email)) user.email = traits.email;
  if (!present(traits.name)) throw new DestinationError('Missing required value from "name"', 400);
  user.name = traits.name;
  if (present(traits.organizationId)) user.organization_id = traits.organizationId;
  if (present(traits.timezone)) user.time_zone = traits.timezone;
  if (present(traits.phone)) user.phone = traits.phone;
  user.external_id = traits.userId || traits.id || event.userId;
  if (user.external_id) user.user_fields = { id: user.external_id };
  for (const key of Object.keys(traits)) {
    if (DEFAULT_FIELDS.user_fields.includes(key) || typeof traits[key] === "object") continue;
    user.user_fields = { ...(user.user_fields ?? {}), [key]: traits[key] };
  }
  const out = { user: dropUndefined(user) };
  if (config.createUsersAsVerified) out.user.verified = true;
  return out;
}

// Requests that make `email` the primary email of the user with this external id.
async function primaryEmailRequests(config, externalId, email) {
  const found = await call(
    config,
    "GET",
    `${api(config)}users/search.json?external_id=${encodeURIComponent(externalId)}`,
    undefined,
    "searching the user by external id",
  );
  if (!ok(found)) throw new DestinationError(`[Zendesk]: unable to find the user: ${JSON.stringify(found.body)}`, failStatus(found.status));
  const userId = found.body?.users?.[0]?.id;
  if (!isSet(userId)) return [];
  const res = await call(config, "GET", `${api(config)}users/${userId}/identities`, undefined, "reading the user's identities");
  if (!ok(res) || !Array.isArray(res.body?.identities)) return [];
  const identities = res.body.identities;
  const duplicate = identities.find((i) => i.type === "email" && i.value === email && i.primary !== true);
  const primary = identities.find((i) => i.type === "email" && i.value !== email && i.primary === true);
  const out = [];
  if (duplicate?.id) out.push(request(config, "DELETE", `${api(config)}users/${userId}/identities/${duplicate.id}`));
  if (primary?.id) {
    out.push(
      request(config, "PUT", `${api(config)}users/${userId}/identities/${primary.id}`, {
        identity: { type: "email", value: `${email}`, verified: Boolean(config.createUsersAsVerified) },
      }),
    );
  }
  return out;
}

async function leaveCompanyRequest(event, config, traits) {
  const orgId = traits.company.id;
  try {
    const userId = await userIdByEmail(config, traits);
    if (!isSet(userId)) return null;
    const res = await call(
      config,
      "GET",
      `${api(config)}users/${userId}/organization_memberships.json`,
      undefined,
      "reading the memberships",
    );
    const membership = res.body?.organization_memberships?.[0];
    if (!ok(res) || !membership || membership.organization_id !== orgId) return null;
    return request(config, "DELETE", `${api(config)}users/${userId}/organization_memberships/${membership.id}.json`);
  } catch (e) {
    log(`zendesk: ${e.message}`);
    return null;
  }
}

async function identify(event, config) {
  requireUserId(event);
  const traits = traitsOf(event) ?? {};
  const payload = identifyPayload(event, config, traits);
  await ensureFields(config, traits, "user_fields");
  const out = [];
  if (config.searchByExternalId && traits.email && payload.user.external_id) {
    out.push(...(await primaryEmailRequests(config, payload.user.external_id, traits.email)));
  }
  if (traits.company?.remove && config.removeUsersFromOrganization && traits.company.id) {
    const leave = await leaveCompanyRequest(event, config, traits);
    if (leave) out.unshift(leave);
  }
  out.push(request(config, "POST", `${api(config)}users/create_or_update.json`, payload));
  return out.length === 1 ? out[0] : out;
}

// ---------- track ----------

async function track(event, config) {
  requireUserId(event);
  const traits = traitsOf(event);
  let email = traits?.email || null;
  if (!email) throw new DestinationError("email not found in traits.", 400);
  const source = sourceName(config);
  const res = await call(config, "GET", `${api(config)}users/search.json?query=${encodeURIComponent(email)}`, undefined, "searching the user");
  if (!ok(res)) {
    throw new DestinationError(
      `Failed to fetch user with email: ${email} due to ${JSON.stringify(res.body?.error ?? res.body)}`,
      failStatus(res.status),
    );
  }
  let userId = res.body?.users?.[0]?.id;
  if (!isSet(userId) || res.body?.count === 0) {
    let created;
    try {
      created = await createUser(event, config, traits);
    } catch (e) {
      if (e.status >= 500) throw e;
      throw new DestinationError(`Failed to fetch user with email: ${email} due to ${e.message}`, 400);
    }
    if (!created.email) throw new DestinationError(`Failed to fetch user with email: ${email} due to User email not found`, 400);
    userId = created.id;
    email = created.email;
  }
  const body = {
    event: { description: event.event, type: event.event, source, properties: event.properties },
    profile: { type: event.event, source, identifiers: [{ type: "email", value: email }] },
  };
  return request(config, "POST", `${api(config)}users/${userId}/events`, body);
}

// ---------- group ----------

function organizationPayload(event) {
  if (!isSet(event.traits)) throw new DestinationError("Organisation Traits are missing. Aborting.", 400);
  const t = event.traits;
  const org = {};
  const put = (k, v) => {
    if (present(v)) org[k] = v;
  };
  put("name", t.name);
  put("domain_names", t.domainNames);
  put("tags", t.tags);
  put("external_id", event.groupId);
  put("url", t.url);
  put("deleted", t.deleted);
  if (org.external_id) org.organization_fields = { id: org.external_id };
  for (const key of Object.keys(t)) {
    if (DEFAULT_FIELDS.organization_fields.includes(key) || typeof t[key] === "object") continue;
    org.organization_fields = { ...(org.organization_fields ?? {}), [key]: t[key] };
  }
  return { organization: dropUndefined(org) };
}

async function group(event, config) {
  const orgUrl = `${api(config)}organizations/create_or_update.json`;
  if (config.sendGroupCallsWithoutUserId && !event.userId) {
    const payload = organizationPayload(event);
    await ensureFields(config, event.traits, "organization_fields");
    return request(config, "POST", orgUrl, payload);
  }
  requireUserId(event);
  const payload = organizationPayload(event);
  await ensureFields(config, event.traits, "organization_fields");
  const res = await call(config, "POST", orgUrl, payload, "creating the organization");
  const orgId = ok(res) ? res.body?.organization?.id : undefined;
  if (!isSet(orgId)) {
    if (res.status === 429 || res.status >= 500) {
      throw new DestinationError(`Couldn't create organization ${event.traits.name}: ${res.status}`, 500);
    }
    throw new DestinationError(
      `Couldn't create user membership for user having external id ${event.userId} as Organization ${event.traits.name} wasn't created`,
      400,
    );
  }
  const traits = get(event, "context.traits");
  let userId = await userIdByEmail(config, traits);
  if (!isSet(userId)) {
    if (!(traits && traits.name && traits.email)) throw new DestinationError("User not found", 400);
    userId = (await createUser(event, config, traits)).id;
  }
  const memberships = await call(
    config,
    "GET",
    `${api(config)}users/${userId}/organization_memberships.json`,
    undefined,
    "reading the memberships",
  );
  if (memberships.body?.organization_memberships?.[0]?.organization_id === orgId) {
    throw new DestinationError("User is already associated with organization", 400);
  }
  return request(config, "POST", `${api(config)}organization_memberships.json`, {
    organization_membership: { user_id: userId, organization_id: orgId },
  });
}

// ---------- entry point ----------

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  if (!["identify", "track", "group"].includes(type)) {
    throw new UnsupportedEventError(`Event type ${type} is not supported`);
  }
  for (const key of ["domain", "email", "apiToken"]) {
    if (!config[key]) throw new DestinationError(`${key} is required`, 400);
  }
  if (type === "identify") return identify(event, config);
  if (type === "track") return track(event, config);
  return group(event, config);
}
