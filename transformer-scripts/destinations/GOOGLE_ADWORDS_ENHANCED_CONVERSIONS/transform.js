// Google Ads enhanced conversions (adjustments) through the Google Ads API
// (https://developers.google.com/google-ads/api/docs/conversions/upload-adjustments), as
// RudderStack's GOOGLE_ADWORDS_ENHANCED_CONVERSIONS destination maps track events.
// Endpoints (https://googleads.googleapis.com, API version v23):
//   POST /v23/customers/<customerId>:uploadConversionAdjustments
//        {conversionAdjustments: [...], partialFailure: true} (up to 2000 adjustments)
//   POST /v23/customers/<customerId>/googleAds:searchStream   conversion action lookup
//        (SELECT conversion_action.id FROM conversion_action WHERE conversion_action.name = …)
// Auth: `Authorization: Bearer <OAuth access token>`, `developer-token: <developerToken>`,
// `login-customer-id: <loginCustomerId>` with subAccount.
// Config (RudderStack's keys): customerId, subAccount, loginCustomerId, listOfConversions
// [{conversions: <conversion action name>}], requireHash (false: identifiers arrive hashed),
// adjustmentType ("ENHANCEMENT" default, "RESTATEMENT").
// Keel extensions (RudderStack gets the token from its OAuth service and the developer token
// from its own environment):
//   developerToken                        the Google Ads API developer token (required)
//   accessToken                           an OAuth access token used as it is, or
//   refreshToken + clientId + clientSecret   Keel gets access tokens from Google's token
//                                         endpoint (tokenUrl, default
//                                         https://oauth2.googleapis.com/token) and caches
//                                         them until a minute before they expire
//   listOfConversions[].conversionActionId   the conversion action's ID (or resource name
//                                         customers/<id>/conversionActions/<id>); without it
//                                         Keel looks the action up by name with searchStream
//                                         and caches the answer for 24 hours, as RudderStack
//   apiBaseUrl                            replaces https://googleads.googleapis.com
//   googleAdsApiVersion                   replaces v23
// Mapping: track events whose name is in listOfConversions → one ENHANCEMENT adjustment:
//   orderId (properties.orderId / order_id, required), gclidDateTimePair (gclid,
//   conversionDateTime), restatementValue (adjustedValue, currencyCode / currency),
//   adjustmentDateTime, userAgent, userIdentifiers: hashedEmail, hashedPhoneNumber,
//   addressInfo (hashedFirstName, hashedLastName, hashedStreetAddress, city, state,
//   countryCode, postalCode), normalised as Google asks (email trimmed + lower-cased, gmail
//   dots and +tags removed; phone E.164-like "+digits"; names and street trimmed +
//   lower-cased) then SHA-256. requireHash false: values must already be SHA-256 digests
//   and are sent as they are; a digest with hashing on, or a plain value with it off, is
//   refused (RudderStack's consistency check). RESTATEMENT adjustments carry no identifiers.
//   identify / page / screen / group / alias → skipped (only conversions are uploaded).
// Batching: batch() merges adjustments for the same customer and conversion action (2000 per
// request) and, with refresh-token settings, puts a fresh access token on the batch at
// delivery time. batchResponse(): a 200 carrying partialFailureError fails only the
// adjustments its errors point at (conversion_adjustments[i]), all of them when it names
// none (RudderStack fails the whole request); a 401 with refresh-token settings is retried
// with a new token.
// Departures from RudderStack: the request is complete (endpoint, conversionAction,
// developer-token) instead of RudderStack's params for its delivery proxy; adjustmentType
// RESTATEMENT is honoured without RudderStack's per-workspace feature flag; a missing access
// token is a configuration error (400) rather than RudderStack's 500.
import { DestinationError, UnsupportedEventError, baseUrl, sha256 } from "keel";

export const maxBatchSize = 2000;

const API_VERSION = "v23";
const DEFAULT_ORIGIN = "https://googleads.googleapis.com";
const DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token";
const ACTION_CACHE_MS = 24 * 60 * 60 * 1000;
const MISSING_IDENTIFIERS =
  "Any of email, phone, firstName, lastName, city, street, countryCode, postalCode or streetAddress is required in traits.";

// Caches kept between calls in this isolate.
const tokenCache = new Map(); // clientId + refreshToken → {token, expiresAt}
const actionCache = new Map(); // customerId + name → {action, at}

// ---------- small helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

const present = (v) => v || v === 0 || v === false;

function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (present(v)) return v;
  }
  return undefined;
}

const T = (k) => [`traits.${k}`, `context.traits.${k}`];
const trim = (v) => (typeof v === "string" ? v.trim() : v);
const str = (v) => (present(v) ? String(v) : undefined);
const isDigest = (v) => /^[\dA-Fa-f]{64}$/.test(v);
const removeHyphens = (v) => (typeof v === "string" ? v.replace(/-/g, "") : v);

function dropEmpty(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined || v === null) continue;
    if (typeof v === "object" && !Array.isArray(v)) {
      const inner = dropEmpty(v);
      if (Object.keys(inner).length > 0) out[k] = inner;
    } else if (present(v)) {
      out[k] = v;
    }
  }
  return out;
}

function setting(config, key) {
  const v = config[key];
  return typeof v === "string" ? v.trim() : v;
}

// ---------- identifiers ----------

const GMAIL = ["gmail.com", "googlemail.com"];

function normaliseEmail(v) {
  const s = v.trim().toLowerCase();
  const at = s.indexOf("@");
  if (at === -1) return s;
  const domain = s.slice(at + 1);
  if (!GMAIL.includes(domain)) return s;
  return `${s.slice(0, at).replace(/\./g, "").replace(/\+.*$/, "")}@${domain}`;
}

function normalisePhone(v) {
  const s = v.replace(/[\s().-]/g, "");
  if (!s) return "";
  return s.startsWith("+") ? s : `+${s}`;
}

const FIELDS = {
  hashedEmail: { normalise: normaliseEmail, valid: (v) => /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(v) },
  hashedPhoneNumber: { normalise: normalisePhone, valid: (v) => /^\+?\d+$/.test(v) },
  hashedFirstName: { normalise: (v) => v.trim().toLowerCase(), valid: (v) => v.length > 0 },
  hashedLastName: { normalise: (v) => v.trim().toLowerCase(), valid: (v) => v.length > 0 },
  hashedStreetAddress: { normalise: (v) => v.trim().toLowerCase(), valid: (v) => v.length > 0 },
};

// The value to send for a PII field, or undefined when it is dropped (invalid, empty).
function identifier(name, raw, hashOn) {
  if (!raw || (typeof raw !== "string" && typeof raw !== "number")) return undefined;
  const s = String(raw);
  const hashed = isDigest(s);
  if (hashOn && hashed) {
    throw new DestinationError(
      `Hashing is enabled but the value for field ${name} appears to already be hashed. Either disable hashing or send unhashed data.`,
      400,
    );
  }
  if (!hashOn && !hashed) {
    throw new DestinationError(
      `Hashing is disabled but the value for field ${name} appears to be unhashed. Either enable hashing or send pre-hashed data.`,
      400,
    );
  }
  if (!hashOn) return s;
  const normalised = FIELDS[name].normalise(s);
  if (!normalised || !FIELDS[name].valid(normalised)) return undefined;
  return sha256(normalised);
}

// null when the event has no identifier at all; else a function building them.
function userIdentifiers(event, config) {
  const hashOn = config.requireHash !== false;
  const email = trim(first(event, [...T("email"), "properties.email"]));
  const phone = trim(first(event, [...T("phone"), "properties.phone"]));
  const firstName = trim(first(event, [...T("firstName"), ...T("firstname"), ...T("first_name")].sort(traitsFirst)));
  const lastName = trim(first(event, [...T("lastName"), ...T("lastname"), ...T("last_name")].sort(traitsFirst)));
  const address = dropEmpty({
    hashedFirstName: firstName,
    hashedLastName: lastName,
    state: str(first(event, ["context.traits.state", "context.traits.address.state"])),
    city: str(first(event, ["context.traits.city", "context.traits.address.city"])),
    countryCode: str(first(event, [
      "context.traits.countryCode", "context.traits.country", "context.traits.address.countryCode", "context.traits.address.country",
    ])),
    postalCode: str(first(event, ["context.traits.postalCode", "context.traits.address.postalCode"])),
    hashedStreetAddress: trim(first(event, ["context.traits.streetAddress", "context.traits.address"])),
  });
  if (!present(email) && !present(phone) && Object.keys(address).length === 0) return null;
  return () => build(email, phone, address, hashOn);
}

function build(email, phone, address, hashOn) {
  const out = [];
  const e = identifier("hashedEmail", email, hashOn);
  if (e) out.push({ hashedEmail: e });
  const p = identifier("hashedPhoneNumber", phone, hashOn);
  if (p) out.push({ hashedPhoneNumber: p });
  if (Object.keys(address).length > 0) {
    const info = { ...address };
    for (const key of ["hashedFirstName", "hashedLastName", "hashedStreetAddress"]) {
      const v = identifier(key, address[key], hashOn);
      if (v) info[key] = v;
      else delete info[key];
    }
    if (Object.keys(info).length > 0) out.push({ addressInfo: info });
  }
  return out;
}

function traitsFirst(a, b) {
  return (a.startsWith("context.") ? 1 : 0) - (b.startsWith("context.") ? 1 : 0);
}

// ---------- OAuth and lookups ----------

function refreshSettings(config) {
  const refreshToken = setting(config, "refreshToken");
  const clientId = setting(config, "clientId");
  const clientSecret = setting(config, "clientSecret");
  return refreshToken && clientId && clientSecret ? { refreshToken, clientId, clientSecret } : null;
}

async function accessToken(config) {
  const refresh = refreshSettings(config);
  if (refresh) {
    const key = `${refresh.clientId}\n${refresh.refreshToken}`;
    const cached = tokenCache.get(key);
    if (cached && cached.expiresAt > Date.now()) return cached.token;
    // Events of one call share one token request.
    if (cached?.pending) return cached.pending;
    const pending = newToken(config, refresh, key);
    tokenCache.set(key, { pending, expiresAt: 0 });
    try {
      return await pending;
    } catch (e) {
      tokenCache.delete(key);
      throw e;
    }
  }
  const token = setting(config, "accessToken");
  if (!token) {
    throw new DestinationError(
      "No Google OAuth credentials: set accessToken, or refreshToken, clientId and clientSecret",
      400,
    );
  }
  return token;
}

async function newToken(config, refresh, key) {
  const url = setting(config, "tokenUrl") || DEFAULT_TOKEN_URL;
  const form = [
    ["grant_type", "refresh_token"],
    ["refresh_token", refresh.refreshToken],
    ["client_id", refresh.clientId],
    ["client_secret", refresh.clientSecret],
  ].map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
  let answer;
  try {
    answer = await fetchV2(url, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: form,
    });
  } catch (e) {
    throw new DestinationError(`Google token request failed: ${e.message}`, 500);
  }
  const body = answer.body;
  if (answer.status < 200 || answer.status >= 300 || !body?.access_token) {
    const why = typeof body === "object" ? body?.error_description || body?.error || JSON.stringify(body) : String(body);
    const status = answer.status >= 500 || answer.status === 429 ? 500 : 400;
    throw new DestinationError(`Google refused the refresh token (HTTP ${answer.status}): ${why}`, status);
  }
  const ttl = Number(body.expires_in) > 0 ? Number(body.expires_in) : 3600;
  tokenCache.set(key, { token: body.access_token, expiresAt: Date.now() + Math.max(ttl - 60, 0) * 1000 });
  return body.access_token;
}

function forgetToken(config) {
  const refresh = refreshSettings(config);
  if (refresh) tokenCache.delete(`${refresh.clientId}\n${refresh.refreshToken}`);
}

function apiBase(config) {
  const version = setting(config, "googleAdsApiVersion") || API_VERSION;
  return `${baseUrl(config.apiBaseUrl, DEFAULT_ORIGIN)}/${version}`;
}

function headersFor(config, token, loginCustomerId) {
  const headers = {
    Authorization: `Bearer ${token}`,
    "Content-Type": "application/json",
    "developer-token": setting(config, "developerToken"),
  };
  if (config.subAccount) headers["login-customer-id"] = loginCustomerId;
  return headers;
}

// The conversion action resource name for `name`: the setting, else a searchStream lookup.
async function conversionAction(config, customerId, name, headers) {
  const entry = config.listOfConversions.find((c) => c?.conversions === name);
  const given = entry?.conversionActionId;
  if (present(given)) {
    const s = String(given).trim();
    return s.startsWith("customers/") ? s : `customers/${customerId}/conversionActions/${s}`;
  }
  const key = `${customerId}\n${name}`;
  const cached = actionCache.get(key);
  if (cached && Date.now() - cached.at < ACTION_CACHE_MS) return cached.action;
  const pending = lookUpAction(config, customerId, name, headers, key);
  actionCache.set(key, { action: pending, at: Date.now() });
  try {
    return await pending;
  } catch (e) {
    actionCache.delete(key);
    throw e;
  }
}

async function lookUpAction(config, customerId, name, headers, key) {
  const escaped = String(name).replace(/\\/g, "\\\\").replace(/'/g, "\\'");
  let answer;
  try {
    answer = await fetchV2(`${apiBase(config)}/customers/${customerId}/googleAds:searchStream`, {
      method: "POST",
      headers,
      body: { query: `SELECT conversion_action.id FROM conversion_action WHERE conversion_action.name = '${escaped}'` },
    });
  } catch (e) {
    throw new DestinationError(`Google Ads conversion action lookup failed: ${e.message}`, 500);
  }
  if (answer.status < 200 || answer.status >= 300) {
    const body = Array.isArray(answer.body) ? answer.body[0] : answer.body;
    const why = body?.error?.message ?? JSON.stringify(answer.body);
    let status = 400;
    if (answer.status === 429) status = 429;
    else if (answer.status >= 500) status = 500;
    else if (answer.status === 401 && refreshSettings(config)) {
      forgetToken(config);
      status = 500;
    }
    throw new DestinationError(`Google Ads conversion action lookup answered HTTP ${answer.status}: ${why}`, status);
  }
  const batches = Array.isArray(answer.body) ? answer.body : [answer.body];
  const found = batches.flatMap((b) => b?.results ?? [])[0]?.conversionAction;
  if (!found) {
    throw new DestinationError(
      "Conversion Action not found, make sure the event name provided on the dashboard is exactly same as the conversion action name in Google Ads",
      400,
    );
  }
  const action = found.resourceName || `customers/${customerId}/conversionActions/${found.id}`;
  actionCache.set(key, { action, at: Date.now() });
  return action;
}

// ---------- process ----------

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Invalid payload. Message Type is not present", 400);
  if (typeof event.type !== "string" || event.type.toLowerCase() !== "track") {
    throw new UnsupportedEventError(`Message Type ${String(event.type)} is not supported: only track events (conversions) are uploaded`);
  }
  if (!present(config.customerId)) throw new DestinationError("customerId is required (setting customerId)", 400);
  if (!setting(config, "developerToken")) throw new DestinationError("developerToken is required (setting developerToken)", 400);
  const name = event.event;
  const conversions = Array.isArray(config.listOfConversions) ? config.listOfConversions : [];
  if (name === undefined || name === "" || !conversions.some((c) => c?.conversions === name)) {
    throw new DestinationError(
      `Conversion named "${String(name)}" was not specified in the RudderStack destination configuration (setting listOfConversions)`,
      400,
    );
  }

  const orderId = first(event, ["properties.orderId", "properties.order_id"]);
  if (!present(orderId)) throw new DestinationError('Missing required value from ["properties.orderId","properties.order_id"]', 400);
  const adjustedValue = present(event.properties?.adjustedValue) ? Number(event.properties.adjustedValue) : undefined;
  const adjustment = dropEmpty({
    gclidDateTimePair: {
      gclid: str(event.properties?.gclid),
      conversionDateTime: str(event.properties?.conversionDateTime),
    },
    restatementValue: {
      adjustedValue: Number.isNaN(adjustedValue) ? undefined : adjustedValue,
      currencyCode: first(event, ["properties.currencyCode", "properties.currency"]),
    },
    orderId: String(orderId),
    adjustmentDateTime: event.properties?.adjustmentDateTime,
    userAgent: str(event.context?.userAgent),
  });
  const identifiers = userIdentifiers(event, config);
  if (identifiers === null) throw new DestinationError(MISSING_IDENTIFIERS, 400);
  if (config.adjustmentType === "RESTATEMENT") {
    adjustment.adjustmentType = "RESTATEMENT";
    delete adjustment.userAgent;
  } else {
    const built = identifiers();
    if (built.length === 0) throw new DestinationError(MISSING_IDENTIFIERS, 400);
    adjustment.userIdentifiers = built;
    adjustment.adjustmentType = "ENHANCEMENT";
  }

  let customerId = config.customerId;
  if (typeof customerId === "number") customerId = String(customerId);
  if (typeof customerId !== "string") throw new DestinationError("customerId should be a string or number", 400);
  customerId = removeHyphens(customerId.trim());
  let loginCustomerId;
  if (config.subAccount) {
    const login = config.loginCustomerId;
    if (!present(login)) throw new DestinationError("loginCustomerId is required as subAccount is true.", 400);
    if (typeof login !== "string" && typeof login !== "number") {
      throw new DestinationError("loginCustomerId should be a string or number", 400);
    }
    loginCustomerId = removeHyphens(String(login).trim());
  }

  const token = await accessToken(config);
  const headers = headersFor(config, token, loginCustomerId);
  adjustment.conversionAction = await conversionAction(config, customerId, name, headers);
  return {
    method: "POST",
    endpoint: `${apiBase(config)}/customers/${customerId}:uploadConversionAdjustments`,
    headers,
    params: {},
    body: { JSON: { conversionAdjustments: [adjustment], partialFailure: true } },
  };
}

// ---------- batching ----------

export async function batch(requests, destination) {
  const config = destination?.Config ?? {};
  const fresh = refreshSettings(config) ? await accessToken(config) : null;
  const groups = new Map();
  const out = [];
  requests.forEach((r, i) => {
    const adjustments = r.body?.JSON?.conversionAdjustments;
    if (!Array.isArray(adjustments) || adjustments.length !== 1) {
      out.push({ request: r, events: [i] });
      return;
    }
    const key = JSON.stringify([r.endpoint, r.headers?.["login-customer-id"] ?? "", adjustments[0].conversionAction ?? ""]);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  });
  for (const items of groups.values()) {
    for (let s = 0; s < items.length; s += maxBatchSize) {
      const chunk = items.slice(s, s + maxBatchSize);
      const head = requests[chunk[0]];
      out.push({
        request: {
          method: "POST",
          endpoint: head.endpoint,
          headers: head.headers,
          params: head.params ?? {},
          body: { JSON: { conversionAdjustments: chunk.map((i) => requests[i].body.JSON.conversionAdjustments[0]), partialFailure: true } },
        },
        events: chunk,
      });
    }
  }
  if (fresh) {
    for (const b of out) b.request = { ...b.request, headers: { ...b.request.headers, Authorization: `Bearer ${fresh}` } };
  }
  out.sort((a, b) => Math.min(...a.events) - Math.min(...b.events));
  return out;
}

// Indices of conversion_adjustments[i] named by a partial failure's errors.
function failedIndices(partial) {
  const found = new Map();
  for (const detail of Array.isArray(partial?.details) ? partial.details : []) {
    for (const err of Array.isArray(detail?.errors) ? detail.errors : []) {
      const path = err?.location?.fieldPathElements;
      if (!Array.isArray(path)) continue;
      const el = path.find((p) => p?.fieldName === "conversion_adjustments" && Number.isInteger(p.index));
      if (el && !found.has(el.index)) found.set(el.index, err.message ?? JSON.stringify(err.errorCode));
    }
  }
  return found;
}

export function batchResponse(response, requests, destination) {
  const config = destination?.Config ?? {};
  const ok = response.status >= 200 && response.status < 300;
  if (!ok) {
    if (response.status === 401 && refreshSettings(config)) {
      forgetToken(config);
      return requests.map(() => ({ status: 500, error: "Google Ads answered 401: the access token is refreshed and the batch retried" }));
    }
    return requests.map(() => null);
  }
  const partial = response.body?.partialFailureError;
  if (!partial || !partial.code) return requests.map(() => null);
  const indices = failedIndices(partial);
  const whole = `Google Ads partial failure: ${JSON.stringify(partial)}`;
  if (indices.size === 0) return requests.map(() => ({ status: 400, error: whole }));
  return requests.map((_, i) => (indices.has(i) ? { status: 400, error: `Google Ads refused the adjustment: ${indices.get(i)}` } : null));
}
