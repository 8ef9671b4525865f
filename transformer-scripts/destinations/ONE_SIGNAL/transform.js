// OneSignal (https://documentation.onesignal.com/reference), as RudderStack's ONE_SIGNAL
// destination maps events. Two API generations, chosen by `version`:
//   legacy (default; player / device model, https://onesignal.com/api/v1):
//     POST /players                          add a device ("Add a device")
//     PUT  /players/{playerId}               edit a device ("Edit device")
//     PUT  /apps/{appId}/users/{externalId}  edit tags by external user id
//   "V2" (user model, https://api.onesignal.com):
//     POST /apps/{appId}/users               create a user / add subscriptions, tags
// Auth: none (these are OneSignal's client-side endpoints keyed by app_id); legacy
// requests carry RudderStack's `OneSignal-Usage` partner header.
// Config (RudderStack's keys): appId (required), version ("V2" for the user model),
// emailDeviceType / smsDeviceType (also create an email (11) / SMS (14) device, or Email /
// SMS subscription, from traits.email / traits.phone), eventAsTags (track property tags
// named <event>_<property>), allowedProperties ([{propertyName}]: string properties (track)
// or traits (legacy group) copied into tags).
// Keel extension: apiBaseUrl replaces the origin (https://onesignal.com for legacy, paths
// under /api/v1; https://api.onesignal.com for V2).
// Mapping:
//   identify, legacy: with a `playerId` external id (context.externalId) → PUT
//     /players/{playerId}; else one POST /players per device: email (with emailDeviceType),
//     SMS (with smsDeviceType), then the event's own device: integrations.one_signal
//     {deviceType (0–14), identifier}, else channel "mobile" context.device.type
//     (ios 0, android 1) with its token (or id), else channel "web" the browser from the
//     user agent (chrome 5, safari 7, firefox 8) with the anonymousId. Body: app_id,
//     external_user_id (userId), device_model, device_os, language (context.locale),
//     created_at / last_active (seconds), country, timezone, tags (the string traits +
//     anonymousId). No device at all → 400.
//   identify, V2: {identity: {external_id} (else integrations.one_signal.aliases),
//     properties: {tags, language, ip, timezone_id, lat, long, created_at, last_active,
//     country, first_active}, subscriptions: [device push (integrations.one_signal
//     {deviceType, identifier|token}, else mobile context.device.type/token, else web
//     "<Browser>Push"), Email, SMS (+ traits.subscriptions.email|phone settings)]}.
//   track: tags {<event>: true, allowed string properties}; V2 also properties.purchases
//     from properties.products[] ({sku, iso, count: quantity, amount}) or the properties.
//     Legacy needs a userId (edit tags by external user id); V2 a userId or aliases.
//   group: tags {groupId, allowed string traits (legacy) / properties (V2)}.
//   page, screen, alias → skipped (OneSignal has no page views, screens or identity merges
//     on these endpoints; its alias API needs an App API key RudderStack's settings lack).
// No batching (OneSignal's user and device endpoints take one record per request).
// Departures from RudderStack: the locale goes out as OneSignal's documented `language`
// (RudderStack sends it misspelled as `laguage`, which OneSignal ignores); an
// integrations-object deviceType of 0 (iOS) counts as set; the email identifier is not
// read from context.externalId[0].
import { DestinationError, UnsupportedEventError, baseUrl } from "keel";

const LEGACY_ORIGIN = "https://onesignal.com";
const V2_ORIGIN = "https://api.onesignal.com";
const PARTNER = "Rudderstack | Partner Integration";

const LEGACY_DEVICE_TYPES = { android: 1, ios: 0, chrome: 5, safari: 7, firefox: 8 };
const V2_DEVICE_TYPES = [
  "iOSPush", "email", "sms", "AndroidPush", "HuaweiPush", "FireOSPush", "WindowsPush",
  "macOSPush", "ChromeExtensionPush", "ChromePush", "SafariLegacyPush", "FirefoxPush",
  "SafariPush",
];
const INTEGRATION_KEYS = ["one signal", "one_signal", "One Signal", "One_Signal", "OneSignal", "onesignal", "ONE_SIGNAL"];

// ---------- helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

const present = (v) => Boolean(v) || v === 0 || v === false;

// The first present value among `paths`.
function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (present(v)) return v;
  }
  return undefined;
}

function compact(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== null) out[k] = v;
  return out;
}

const traitsOf = (e) => first(e, ["traits", "context.traits"]);
const userIdOf = (e) => first(e, ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"]);
const emailOf = (e) => first(e, ["traits.email", "context.traits.email", "properties.email"]);
const phoneOf = (e) => first(e, ["traits.phone", "context.traits.phone", "properties.phone"]);

function integrationsOf(event) {
  const i = event.integrations;
  if (!i || typeof i !== "object") return null;
  for (const k of INTEGRATION_KEYS) if (i[k] && typeof i[k] === "object") return i[k];
  return null;
}

function externalId(event, type) {
  const list = event.context?.externalId;
  if (!Array.isArray(list)) return null;
  const found = list.find((x) => x?.type === type);
  return found ? found.id : null;
}

// Unix seconds of a date (an epoch in milliseconds is kept as it is).
function seconds(v) {
  if (v === undefined) return undefined;
  if (typeof v === "number" || /^\d+$/.test(String(v))) return v;
  const ms = Date.parse(v);
  return Number.isNaN(ms) ? undefined : Math.floor(ms / 1000);
}

const createdAt = (e) => seconds(first(e, ["traits.createdAt", "context.traits.createdAt", "timestamp", "originalTimestamp"]));

// The browser's name as ua-parser-js names it (only Chrome, Safari and Firefox matter here).
function browserName(ua) {
  if (typeof ua !== "string" || !ua) return undefined;
  if (/Edg(e|A|iOS)?\//.test(ua)) return "Edge";
  if (/OPR\/|Opera|OPiOS/.test(ua)) return "Opera";
  if (/SamsungBrowser|UCBrowser|YaBrowser|Vivaldi|HeadlessChrome/.test(ua)) return "Other";
  if (/FxiOS\//.test(ua)) return "Firefox";
  if (/Firefox\//.test(ua)) return /(Mobile|Tablet);/.test(ua) ? "Mobile Firefox" : "Firefox";
  if (/; wv\)/.test(ua)) return "Chrome WebView";
  if (/CriOS\/|CrMo\/|Chrome\//.test(ua)) return "Chrome";
  if (/Version\/[\d.]+.*Mobile\/\w+ Safari/.test(ua) || /Mobile Safari/.test(ua)) return "Mobile Safari";
  if (/Safari\//.test(ua)) return "Safari";
  return undefined;
}

// Tags from the string traits (+ the anonymousId); undefined without traits.
function traitTags(event) {
  const traits = traitsOf(event);
  if (!traits || typeof traits !== "object") return undefined;
  const tags = {};
  for (const [k, v] of Object.entries(traits)) if (typeof v === "string") tags[k] = v;
  if (event.anonymousId) tags.anonymousId = event.anonymousId;
  return tags;
}

// allowedProperties: string values of `source` copied into `tags`.
function allowedTags(tags, source, config, prefix) {
  const allowed = config.allowedProperties;
  if (!source || typeof source !== "object" || !Array.isArray(allowed)) return;
  for (const item of allowed) {
    const name = item?.propertyName;
    if (!name || typeof source[name] !== "string") continue;
    tags[prefix ? `${prefix}_${name}` : name] = source[name];
  }
}

// ---------- legacy (player model) ----------

function legacyRequest(config, method, path, body) {
  return {
    method,
    endpoint: `${baseUrl(config.apiBaseUrl, LEGACY_ORIGIN)}/api/v1${path}`,
    headers: { Accept: "application/json", "Content-Type": "application/json", "OneSignal-Usage": PARTNER },
    params: {},
    body: { JSON: compact(body) },
  };
}

function legacyDevice(event, payload) {
  const integ = integrationsOf(event);
  if (integ?.deviceType && integ?.identifier) {
    const type = parseInt(integ.deviceType, 10);
    if (Number.isNaN(type) || type < 0 || type > 14) {
      throw new DestinationError(`device_type ${type} is not a valid device_type`, 400);
    }
    payload.device_type = type;
    payload.identifier = integ.identifier;
    return;
  }
  if (event.channel === "mobile") {
    const type = event.context?.device?.type;
    payload.device_type = typeof type === "string" ? LEGACY_DEVICE_TYPES[type.toLowerCase()] : undefined;
    payload.identifier = event.context?.device?.token || event.context?.device?.id;
  }
  if (event.channel === "web" && event.context?.userAgent) {
    payload.device_type = LEGACY_DEVICE_TYPES[browserName(event.context.userAgent)?.toLowerCase()];
    payload.identifier = event.anonymousId;
  }
}

function legacyIdentify(event, config) {
  const payload = compact({
    device_model: event.context?.device?.model || undefined,
    device_os: event.context?.os?.version || undefined,
    language: event.context?.locale || undefined,
    created_at: createdAt(event),
    last_active: createdAt(event),
    country: first(event, ["traits.country", "context.traits.country", "traits.address.country", "context.traits.address.country"]),
    timezone: event.context?.timezone || undefined,
    external_user_id: userIdOf(event),
  });
  payload.app_id = config.appId;
  payload.tags = traitTags(event);
  const playerId = externalId(event, "playerId");
  if (playerId) return legacyRequest(config, "PUT", `/players/${encodeURIComponent(playerId)}`, payload);

  const out = [];
  if (config.emailDeviceType) {
    const email = emailOf(event);
    if (email) out.push(legacyRequest(config, "POST", "/players", { ...payload, device_type: 11, identifier: email }));
  }
  if (config.smsDeviceType) {
    const phone = phoneOf(event);
    if (phone) out.push(legacyRequest(config, "POST", "/players", { ...payload, device_type: 14, identifier: phone }));
  }
  const device = { ...payload };
  legacyDevice(event, device);
  if (device.device_type !== undefined && device.device_type !== null) {
    out.push(legacyRequest(config, "POST", "/players", device));
  }
  if (out.length === 0) {
    throw new DestinationError("Correct identifier is required for creating a device (identify call)", 400);
  }
  return out;
}

function legacyTrack(event, config) {
  if (!event.event) throw new DestinationError("Event is not present in the input payloads", 400);
  const userId = userIdOf(event);
  if (!userId) throw new DestinationError("userId is required for track events/updating a device", 400);
  const tags = { [event.event]: true };
  allowedTags(tags, event.properties, config, config.eventAsTags ? event.event : undefined);
  return legacyRequest(config, "PUT", `/apps/${config.appId}/users/${encodeURIComponent(userId)}`, { tags });
}

function legacyGroup(event, config) {
  const groupId = first(event, ["groupId", "traits.groupId"]);
  if (!groupId) throw new DestinationError("groupId is required for group events", 400);
  const userId = userIdOf(event);
  if (!userId) throw new DestinationError("userId is required for group events", 400);
  const tags = { groupId };
  allowedTags(tags, traitsOf(event), config);
  return legacyRequest(config, "PUT", `/apps/${config.appId}/users/${encodeURIComponent(userId)}`, { tags });
}

// ---------- V2 (user model) ----------

function v2Request(config, body) {
  return {
    method: "POST",
    endpoint: `${baseUrl(config.apiBaseUrl, V2_ORIGIN)}/apps/${config.appId}/users`,
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    params: {},
    body: { JSON: compact(body) },
  };
}

function aliasesOf(event) {
  const a = integrationsOf(event)?.aliases;
  return a && typeof a === "object" && Object.keys(a).length > 0 ? a : null;
}

const SUBSCRIPTION_KEYS = ["enabled", "notification_types", "session_time", "session_count", "app_version", "test_type"];

function subscription(event, type, token, field) {
  const sub = compact({
    type,
    token,
    device_model: event.context?.device?.model,
    device_os: event.context?.os?.version,
  });
  const traits = event.context?.traits || event.traits;
  const extra = field ? traits?.subscriptions?.[field] : undefined;
  if (extra && typeof extra === "object") {
    for (const k of SUBSCRIPTION_KEYS) if (present(extra[k])) sub[k] = extra[k];
  }
  return sub;
}

function pushDevice(event) {
  const integ = integrationsOf(event);
  let type;
  let token;
  if (integ?.deviceType && integ?.identifier) {
    type = integ.deviceType;
    token = integ.token || integ.identifier;
  }
  if (!type) {
    if (event.channel === "mobile") {
      type = event.context?.device?.type;
      token = event.context?.device?.token || event.context?.device?.id;
    }
    if (event.channel === "web" && event.context?.userAgent) {
      type = `${browserName(event.context.userAgent)}Push`;
      token = event.anonymousId;
    }
  }
  return V2_DEVICE_TYPES.includes(type) && token ? { type, token } : null;
}

function subscriptions(event, config) {
  const subs = [];
  const device = pushDevice(event);
  if (device) subs.push(subscription(event, device.type, device.token));
  if (config.emailDeviceType) {
    const email = emailOf(event);
    if (email) subs.push(subscription(event, "Email", email, "email"));
  }
  if (config.smsDeviceType) {
    const phone = phoneOf(event);
    if (phone) subs.push(subscription(event, "SMS", phone, "phone"));
  }
  return subs.length ? subs : undefined;
}

function v2Identify(event, config) {
  const properties = compact({
    language: event.context?.locale || undefined,
    ip: event.context?.ip || undefined,
    timezone_id: event.context?.timezone || undefined,
    lat: first(event, ["context.location.latitude"]),
    long: first(event, ["context.location.longitude"]),
    created_at: createdAt(event),
    last_active: createdAt(event),
    country: first(event, ["traits.country", "context.traits.country", "traits.address.country", "context.traits.address.country"]),
    first_active: seconds(first(event, ["traits.firstActive", "context.traits.firstActive", "traits.first_active", "context.traits.first_active"])),
  });
  const userId = userIdOf(event);
  let identity;
  if (userId) identity = { external_id: userId };
  else {
    identity = aliasesOf(event);
    if (!identity) throw new DestinationError("userId or any other alias is required for identify", 400);
  }
  const tags = traitTags(event);
  if (tags) properties.tags = tags;
  return v2Request(config, { properties, identity, subscriptions: subscriptions(event, config) });
}

function purchases(event) {
  const props = event.properties;
  if (Array.isArray(props?.products)) {
    return props.products.map((p) => compact({ sku: p?.sku, iso: p?.iso, count: p?.quantity, amount: p?.amount }));
  }
  const one = compact({ sku: props?.sku, iso: props?.iso, count: props?.quantity, amount: props?.amount });
  return Object.keys(one).length ? [one] : [];
}

function v2TrackOrGroup(event, config, type) {
  const tags = {};
  const properties = {};
  if (type === "track") {
    if (!event.event) throw new DestinationError("Event is not present in the input payloads", 400);
    tags[event.event] = true;
    properties.purchases = purchases(event);
  } else {
    const groupId = first(event, ["groupId", "traits.groupId"]);
    if (!groupId) throw new DestinationError("groupId is required for group events", 400);
    tags.groupId = groupId;
  }
  const userId = userIdOf(event);
  let identity;
  if (userId) identity = { external_id: userId };
  else {
    identity = aliasesOf(event);
    if (!identity) throw new DestinationError("userId or any other alias is required for track and group", 400);
  }
  allowedTags(tags, event.properties, config, type === "track" && config.eventAsTags ? event.event : undefined);
  properties.tags = tags;
  return v2Request(config, { properties, identity });
}

// ---------- entry point ----------

function supportedType(event) {
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  if (!["identify", "track", "group"].includes(type)) {
    throw new UnsupportedEventError(`Message type ${type} is not supported`);
  }
  return type;
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (config.version === "V2") {
    const type = supportedType(event);
    if (!config.appId) throw new DestinationError("appId is a required field", 400);
    return type === "identify" ? v2Identify(event, config) : v2TrackOrGroup(event, config, type);
  }
  if (!event.type) throw new DestinationError("Event type is required", 400);
  if (!config.appId) throw new DestinationError("appId is a required field", 400);
  const type = supportedType(event);
  if (type === "identify") return legacyIdentify(event, config);
  if (type === "track") return legacyTrack(event, config);
  return legacyGroup(event, config);
}
