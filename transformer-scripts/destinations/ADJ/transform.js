// Adjust through its server-to-server event API (https://dev.adjust.com/en/api/s2s-api/events),
// as RudderStack's ADJ destination maps events.
// Endpoint: POST https://s2s.adjust.com/event, every field as a query parameter (s2s=1,
// app_token, event_token, environment, device ids, revenue…), no body.
// Auth: the app token in the parameters; with S2S security enabled in Adjust, the optional
// `authToken` setting (Keel extension) is sent as `Authorization: Bearer <authToken>`.
// Config (RudderStack's keys): appToken, customMappings [{from: event name, to: Adjust event
// token}], partnerParamsKeys [{from: property, to: partner parameter}], environment (true →
// "production", else "sandbox"). Keel extensions: apiBaseUrl replaces the origin;
// authToken (above).
// Mapping:
//   track only, and only events named in customMappings (exact name) → event_token; other
//     event names are refused (400). Device: context.device.type "android" → android_id
//     (device.id) + gps_adid (advertisingId); ios / watchos / ipados / tvos → idfv + idfa;
//     other types, or no type / id → 400. att_status (device.attTrackingStatus),
//     tracking_enabled (device.adTrackingEnabled), ip_address (context.ip, else request_ip).
//     properties.revenue → revenue (a "$" prefix dropped, rounded to 2 decimals; not a number
//     → 400) with currency (properties.currency, default USD). callback_params: the other
//     properties flattened ("a.b", "a[0].c") with string values, as a JSON string.
//     partner_params: the properties named in partnerParamsKeys, renamed, as strings.
//   identify / page / screen / group / alias: Adjust's S2S API takes events only →
//     UnsupportedEventError.
// Batching: none (one request per event, Adjust has no batch endpoint).
// Departures from RudderStack: partnerParamsKeys look the property up by its exact name
// first (RudderStack only by the lower-cased name, so "Key1" never matched) and keep 0 /
// false values; a missing appToken is refused before any event check; the optional
// authToken header.
import { DestinationError, UnsupportedEventError, baseUrl } from "keel";

const ORIGIN = "https://s2s.adjust.com";
const APPLE = ["ios", "watchos", "ipados", "tvos"];
const REJECTED_CALLBACK = ["revenue", "currency"];

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

const present = (v) => v !== undefined && v !== null;
const usable = (v) => Boolean(v) || v === 0 || v === false;

// RudderStack's flattenJson: nested objects "a.b", array items "a[0]".
function flatten(data) {
  const out = {};
  const walk = (cur, prop) => {
    if (Object(cur) !== cur) {
      out[prop] = cur;
    } else if (Array.isArray(cur)) {
      cur.forEach((item, i) => walk(item, `${prop}[${i}]`));
      if (cur.length === 0) out[prop] = [];
    } else {
      const keys = Object.keys(cur);
      for (const key of keys) walk(cur[key], prop ? `${prop}.${key}` : key);
      if (keys.length === 0 && prop) out[prop] = {};
    }
  };
  walk(data, "");
  return out;
}

function revenueOf(value) {
  let v = value;
  if (typeof v === "string" && v.charAt(0) === "$") v = v.substring(1);
  const n = Number.parseFloat(Number(v || 0).toFixed(2));
  if (Number.isNaN(n)) throw new DestinationError("Revenue is not in the correct format", 400);
  return n;
}

function mapping(list, lowerCase) {
  const out = {};
  if (!Array.isArray(list)) return out;
  for (const row of list) {
    const from = row?.from;
    if (from === undefined || from === null || String(from).trim() === "") continue;
    out[lowerCase ? String(from).toLowerCase() : from] = row.to;
  }
  return out;
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Message Type is not present. Aborting message.", 400);
  const type = String(event.type).toLowerCase();
  if (type !== "track") {
    throw new UnsupportedEventError(
      `Message type not supported: Adjust's S2S API takes track events only, not ${type}`,
    );
  }
  if (!config.appToken) {
    throw new DestinationError(
      "App Token is not present. Please configure your app token from config dashbaord (appToken)",
      400,
    );
  }
  const properties = event.properties;
  const params = {};

  // callback_params (from properties) and revenue come first, as RudderStack builds them.
  const hasProps = Boolean(properties);
  const rawRevenue = get(event, "properties.revenue");
  if (present(rawRevenue)) {
    const revenue = revenueOf(rawRevenue);
    if (usable(revenue)) params.revenue = revenue;
  }
  const ip = event.context?.ip || event.request_ip;
  if (ip) params.ip_address = ip;

  const platform = event.context?.device?.type;
  const deviceId = event.context?.device?.id;
  if (typeof platform !== "string" || !platform || !deviceId) {
    throw new DestinationError("Device type/id  not present", 400);
  }
  const advertisingId = event.context?.device?.advertisingId;
  if (platform.toLowerCase() === "android") {
    params.android_id = deviceId;
    if (usable(advertisingId)) params.gps_adid = advertisingId;
  } else if (APPLE.includes(platform.toLowerCase())) {
    params.idfv = deviceId;
    if (usable(advertisingId)) params.idfa = advertisingId;
  } else {
    throw new DestinationError("Device type not valid", 400);
  }
  const att = event.context?.device?.attTrackingStatus;
  if (usable(att)) params.att_status = att;
  const tracking = event.context?.device?.adTrackingEnabled;
  if (usable(tracking)) params.tracking_enabled = tracking;
  if (params.revenue) params.currency = properties?.currency || "USD";

  const tokens = mapping(config.customMappings, false);
  const eventToken = event.event ? tokens[event.event] : undefined;
  if (!eventToken) throw new DestinationError("No event token mapped for this event", 400);

  const partner = {};
  for (const [key, to] of Object.entries(mapping(config.partnerParamsKeys, true))) {
    const original = (config.partnerParamsKeys ?? []).find((r) => String(r?.from ?? "").toLowerCase() === key)?.from;
    let v = properties && typeof properties === "object" ? properties[original] : undefined;
    if (!present(v) || v === "") v = properties && typeof properties === "object" ? properties[key] : undefined;
    if (present(v) && v !== "") partner[to] = String(v);
  }
  if (Object.keys(partner).length > 0) params.partner_params = partner;

  if (hasProps && typeof properties === "object") {
    const rest = {};
    for (const [k, v] of Object.entries(properties)) if (!REJECTED_CALLBACK.includes(k)) rest[k] = v;
    const flat = flatten(rest);
    const strings = {};
    for (const [k, v] of Object.entries(flat)) strings[k] = String(v);
    if (Object.keys(strings).length > 0) params.callback_params = JSON.stringify(strings);
  }

  params.s2s = 1;
  params.app_token = config.appToken;
  params.event_token = eventToken;
  params.environment = config.environment ? "production" : "sandbox";

  const headers = { Accept: "*/*" };
  if (config.authToken) headers.Authorization = `Bearer ${config.authToken}`;
  return {
    method: "POST",
    endpoint: `${baseUrl(config.apiBaseUrl, ORIGIN)}/event`,
    headers,
    params,
    body: {},
  };
}
