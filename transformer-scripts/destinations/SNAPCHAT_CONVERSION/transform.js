// Snapchat Conversions API (https://developers.snap.com/api/marketing-api/Conversions-API),
// as RudderStack's SNAPCHAT_CONVERSION destination maps events.
// Endpoints (https://tr.snapchat.com):
//   apiVersion "newApi" (CAPI v3): POST /v3/<pixelId, or snapAppId for app events>/events
//     ?access_token=<apiKey>   {data: [events]} (up to 2000 events)
//   otherwise ("legacyApi", RudderStack's default, CAPI v2): POST /v2/conversion
//     (one event object; a batch is a JSON array of them, up to 2000)
//     Auth: `Authorization: Bearer <apiKey>`.
// Config (RudderStack's keys): apiKey, pixelId (web and offline events), snapAppId + appId
// (app events), apiVersion ("legacyApi" | "newApi"), rudderEventsToSnapEvents [{from, to}],
// enableDeduplication + deduplicationKey (path in the event, default messageId).
// Keel extensions: apiBaseUrl replaces https://tr.snapchat.com; validateEventTime (default
// true) — false turns off the local age check (37 days for v2, 7 for v3; Snapchat refuses
// older events itself).
// Mapping: the conversion type comes from properties.eventConversionType, else the channel
// (web → WEB, mobile / mobile_app → MOBILE_APP, offline → OFFLINE), else OFFLINE.
//   page → PAGE_VIEW.
//   track → the event name (spaces → "_", case-insensitive) or its rudderEventsToSnapEvents
//     mappings: products_searched → SEARCH, product_list_viewed / product_viewed →
//     VIEW_CONTENT, promotion_viewed → AD_VIEW, promotion_clicked → AD_CLICK, product_added →
//     ADD_CART, checkout_started → START_CHECKOUT, payment_info_entered → ADD_BILLING,
//     order_completed → PURCHASE, product_added_to_wishlist → ADD_TO_WISHLIST, sign_up,
//     app_open, save, subscribe, login, share, reserve, rate, start_trial, list_view,
//     page_view, app_install, custom_event_1…5, … → Snapchat's names; others are refused.
//   v2 fields: item_ids, item_category, number_items, price (sum of products), currency,
//     transaction_id, search_string, sign_up_method, description, brands, click_id, uuid_c1,
//     country, region (traits), user_agent (lower-cased), hashed_email / phone / ip / idfv / mobile_ad_id /
//     first / middle / last name / city / state / zip, timestamp (seconds), data_use
//     (['lmu'] for attTrackingStatus 2), pixel_id + page_url (web), snap_app_id + app_id (app).
//   v3 fields: event_name, event_time, action_source, event_source_url (web), user_data (em,
//     ph, fn, ln, ge, ct, st, zp, country hashed; client_ip_address, client_user_agent, idfv,
//     madid, sc_click_id, sc_cookie1), custom_data (content_ids, contents, content_category,
//     num_items, value, currency, search_string, brand), app_data (app_id, extinfo,
//     advertiser_tracking_enabled), event_id (dedup), data_processing_options.
//   At least one of email, phone, advertising ID, or IP + user agent is required.
//   identify / screen / group / alias → skipped (not supported).
// Hashing: SHA-256 of the trimmed, lower-cased value; a value that already is a SHA-256 hex
// digest is sent as it is; phone numbers lose non-digits and leading zeros first.
// Batching: batch() merges v2 events into one JSON array request (2000), and v3 events for the
// same pixel (web / offline) or app into one {data: [...]} request (2000 events).
// Departures from RudderStack: RudderStack's v2 batch body is {batch: "<JSON text>"} (its
// server sends that text as the body); Keel's JSON_ARRAY is the array itself. When there
// are no products, RudderStack sends price / value "null" and content_ids null; Keel leaves
// them out. v3 accepts an email that already is a SHA-256 digest (RudderStack drops it as
// not an email). The timezone abbreviation in extinfo comes from a built-in table of common
// zones (V8 here has no time zone data); other zones leave that slot empty.
import { DestinationError, UnsupportedEventError, baseUrl, sha256, isSha256 } from "keel";

export const maxBatchSize = 2000;

const DEFAULT_ORIGIN = "https://tr.snapchat.com";

const EVENT_NAMES = {
  products_searched: "SEARCH",
  product_list_viewed: "VIEW_CONTENT",
  promotion_viewed: "AD_VIEW",
  promotion_clicked: "AD_CLICK",
  product_viewed: "VIEW_CONTENT",
  product_added: "ADD_CART",
  checkout_started: "START_CHECKOUT",
  payment_info_entered: "ADD_BILLING",
  order_completed: "PURCHASE",
  product_added_to_wishlist: "ADD_TO_WISHLIST",
  sign_up: "SIGN_UP",
  app_open: "APP_OPEN",
  save: "SAVE",
  subscribe: "SUBSCRIBE",
  complete_tutorial: "COMPLETE_TUTORIAL",
  level_complete: "LEVEL_COMPLETE",
  invite: "INVITE",
  login: "LOGIN",
  share: "SHARE",
  reserve: "RESERVE",
  achievement_unlocked: "ACHIEVEMENT_UNLOCKED",
  spent_credits: "SPENT_CREDITS",
  rate: "RATE",
  start_trial: "START_TRIAL",
  list_view: "LIST_VIEW",
  page_view: "PAGE_VIEW",
  app_install: "APP_INSTALL",
  custom_event_1: "CUSTOM_EVENT_1",
  custom_event_2: "CUSTOM_EVENT_2",
  custom_event_3: "CUSTOM_EVENT_3",
  custom_event_4: "CUSTOM_EVENT_4",
  custom_event_5: "CUSTOM_EVENT_5",
};
const CHANNELS = { web: "WEB", mobile: "MOBILE_APP", mobile_app: "MOBILE_APP", offline: "OFFLINE" };
const APPLE = ["ios", "watchos", "ipados", "tvos"];

// Per-event field tables: [destination key, source paths]. `p.` stands for `properties.`.
const V2_DEFAULT = [
  ["transaction_id", ["p.transaction_id", "p.transactionId"]],
  ["item_ids", ["p.item_ids"]],
  ["item_category", ["p.category"]],
  ["number_items", ["p.number_items", "p.quantity"]],
  ["price", ["p.price", "p.value", "p.revenue"]],
  ["currency", ["p.currency"]],
  ["search_string", ["p.search_string"]],
  ["sign_up_method", ["p.signUpMethod", "p.sign_up_method"]],
  ["client_dedup_id", ["p.client_dedup_id"]],
];
const replace = (table, changes, drop = []) =>
  table.filter(([k]) => !drop.includes(k)).map(([k, v]) => [k, changes[k] ?? v]);
const V2_TABLES = {
  products_searched: [["search_string", ["p.query"]], ...V2_DEFAULT],
  product_list_viewed: replace(V2_DEFAULT, {}, ["item_ids"]),
  product_viewed: replace(V2_DEFAULT, { item_ids: ["p.product_id"] }),
  product_added: replace(V2_DEFAULT, { item_ids: ["p.product_id"] }),
  product_added_to_wishlist: replace(V2_DEFAULT, { item_ids: ["p.product_id"], sign_up_method: ["p.sign_up_method", "p.signUpMethod"] }),
  checkout_started: replace(V2_DEFAULT, { transaction_id: ["p.order_id", "p.orderId"] }, ["item_ids", "sign_up_method"]),
  payment_info_entered: replace(V2_DEFAULT, { transaction_id: ["p.checkout_id", "p.transactionId"] }),
  order_completed: replace(V2_DEFAULT, { transaction_id: ["p.order_id", "p.orderId"], item_category: ["p.item_category", "p.category"] }, ["item_ids", "search_string", "sign_up_method"]),
};
const V2_COMMON = [
  ["description", ["p.description"]],
  ["brands", ["p.brands"], "array"],
  ["event_tag", ["p.event_tag"]],
  ["click_id", ["p.click_id"]],
  ["level", ["p.level"]],
  ["uuid_c1", ["p.uuid_c1"]],
  ["customer_status", ["p.customer_status"]],
  ["data", ["p.data"]],
  ["att_status", ["p.att_status"]],
  ["sign_up_method", ["p.sign_up_method"]],
  ["advertiser_cookie_1", ["p.advertiser_cookie_1"]],
  ["delivery_method", ["p.delivery_method"]],
  ["device_model", ["context.device.model"]],
  ["country", ["traits.country", "context.traits.country"]],
  ["region", ["traits.region", "context.traits.region"]],
  ["user_agent", ["context.userAgent"], "lower"],
];

const V3_DEFAULT = [
  ["custom_data.content_ids", ["p.item_ids"]],
  ["custom_data.content_category", ["p.category"]],
  ["custom_data.num_items", ["p.number_items", "p.quantity"]],
  ["custom_data.value", ["p.price", "p.value", "p.revenue"]],
  ["custom_data.currency", ["p.currency"]],
  ["custom_data.search_string", ["p.search_string"]],
  ["event_id", ["p.client_dedup_id", "p.transaction_id", "p.transactionId"]],
];
const V3_TABLES = {
  products_searched: replace(V3_DEFAULT, { "custom_data.search_string": ["p.search_string", "p.query"] }),
  product_list_viewed: replace(V3_DEFAULT, {}, ["custom_data.content_ids"]),
  promotion_viewed: replace(V3_DEFAULT, {}, ["custom_data.value"]).concat([["custom_data.price", ["p.price", "p.value", "p.revenue"]]]),
  promotion_clicked: replace(V3_DEFAULT, {}, ["custom_data.value"]).concat([["custom_data.price", ["p.price", "p.value", "p.revenue"]]]),
  product_viewed: replace(V3_DEFAULT, { "custom_data.content_ids": ["p.product_id"] }),
  product_added: replace(V3_DEFAULT, { "custom_data.content_ids": ["p.product_id"] }),
  product_added_to_wishlist: replace(V3_DEFAULT, { "custom_data.content_ids": ["p.product_id"] }),
  checkout_started: replace(V3_DEFAULT, { event_id: ["p.client_dedup_id", "p.order_id", "p.orderId"] }, ["custom_data.content_ids"]),
  payment_info_entered: replace(V3_DEFAULT, { event_id: ["p.client_dedup_id", "p.checkout_id", "p.transactionId"] }),
  order_completed: replace(
    V3_DEFAULT,
    { "custom_data.content_category": ["p.item_category", "p.category"], event_id: ["p.client_dedup_id", "p.order_id", "p.orderId"] },
    ["custom_data.content_ids", "custom_data.search_string"],
  ),
};
const V3_COMMON = [
  ["custom_data.brand", ["p.brands", "p.brand"], "array"],
  ["user_data.sc_click_id", ["p.click_id"]],
  ["user_data.sc_cookie1", ["p.uuid_c1"]],
  ["app_data.advertiser_tracking_enabled", ["p.att_status"]],
  ["user_data.client_ip_address", ["context.ip", "request_ip"]],
  ["user_data.client_user_agent", ["context.userAgent"]],
  ["user_data.idfv", ["p.idfv", "context.device.id"]],
  ["user_data.madid", ["p.adId", "context.device.advertisingId"]],
];

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
    const v = get(obj, p.startsWith("p.") ? `properties.${p.slice(2)}` : p);
    if (present(v)) return v;
  }
  return undefined;
}

function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (let i = 0; i < keys.length - 1; i += 1) {
    if (o[keys[i]] === null || typeof o[keys[i]] !== "object") o[keys[i]] = {};
    o = o[keys[i]];
  }
  o[keys[keys.length - 1]] = value;
}

// Fills an object from a field table.
function construct(event, table) {
  const out = {};
  for (const [key, paths, kind] of table) {
    let v = first(event, paths);
    if (!present(v)) continue;
    if (kind === "array" && !Array.isArray(v)) continue;
    if (kind === "lower") v = String(v).toLowerCase();
    setPath(out, key, v);
  }
  return out;
}

function dropNulls(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== null) out[k] = v;
  return out;
}

function hashed(value) {
  if (!value) return null;
  const s = String(value);
  return isSha256(s) ? s : sha256(s);
}

const T = (k) => [`traits.${k}`, `context.traits.${k}`];
const GENERIC = {
  email: [...T("email"), "properties.email", "context.externalId.0.id"],
  emailOnly: [...T("email"), "properties.email"],
  phone: [...T("phone"), "properties.phone"],
  firstName: [...T("firstName"), ...T("firstname"), ...T("first_name")].sort(traitsFirst),
  lastName: [...T("lastName"), ...T("lastname"), ...T("last_name")].sort(traitsFirst),
  middleName: [...T("middleName"), ...T("middle_name")].sort(traitsFirst),
  gender: T("gender"),
  city: T("address.city"),
  state: T("state"),
  country: T("country"),
  zipcode: [
    ...["zip", "zipcode", "zip_code", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `traits.${k}`),
    ...["zipcode", "zip_code", "zip", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `traits.address.${k}`),
    ...["zip", "zipcode", "zip_code", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `context.traits.${k}`),
    ...["zip", "zipcode", "zip_code", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `context.traits.address.${k}`),
  ],
  pageUrl: ["context.page.url", "properties.url"],
};

function traitsFirst(a, b) {
  return (a.startsWith("context.") ? 1 : 0) - (b.startsWith("context.") ? 1 : 0);
}

const generic = (event, name) => first(event, GENERIC[name]);

function normalisedPhone(event) {
  const phone = generic(event, "phone");
  if (!phone) return null;
  if (isSha256(String(phone))) return phone;
  return String(phone).replace(/\D/g, "").replace(/^0+/, "") || null;
}

function conversionType(event) {
  const fromProps = event.properties?.eventConversionType;
  if (fromProps && CHANNELS[String(fromProps).toLowerCase()]) return CHANNELS[String(fromProps).toLowerCase()];
  const channel = event.channel;
  if (channel && CHANNELS[String(channel).toLowerCase()]) return CHANNELS[String(channel).toLowerCase()];
  return "OFFLINE";
}

function checkConfigFor(type, config) {
  if ((type === "WEB" || type === "OFFLINE") && !config.pixelId) {
    throw new DestinationError("Pixel Id is required for web and offline events (setting pixelId)", 400);
  }
  if (type === "MOBILE_APP" && !(config.appId && config.snapAppId)) {
    const which = !config.snapAppId ? "Snap App Id" : "App Id";
    throw new DestinationError(`${which} is required for app events (settings snapAppId and appId)`, 400);
  }
}

// Seconds (as a string, as RudderStack sends them) of the event time; refuses old events.
function eventTime(event, config, maxDays) {
  const ts = first(event, ["timestamp", "originalTimestamp"]);
  if (!present(ts)) return undefined;
  const ms = typeof ts === "number" ? ts : Date.parse(ts);
  if (Number.isNaN(ms)) throw new DestinationError(`Invalid timestamp: ${ts}`, 400);
  if (config.validateEventTime !== false) {
    const days = Math.ceil((Math.floor(Date.now() / 1000) - Math.floor(ms / 1000)) / 86400);
    if (days > maxDays) throw new DestinationError(`Events must be sent within ${maxDays} days of their occurrence`, 400);
  }
  return String(Math.floor(ms / 1000));
}

function dataUse(event) {
  return event.context?.device?.attTrackingStatus === 2 ? "['lmu']" : null;
}

function itemIds(event) {
  const products = event.properties?.products;
  if (!Array.isArray(products)) return null;
  return products.map((p) => p?.product_id).filter((id) => id);
}

function priceSum(event) {
  const products = event.properties?.products;
  if (!Array.isArray(products)) return null;
  let sum = 0;
  for (const p of products) {
    const price = p?.price;
    const quantity = p?.quantity ?? 1;
    if (price && !Number.isNaN(Number.parseFloat(price)) && !Number.isNaN(Number.parseInt(quantity, 10))) {
      sum += Number.parseFloat(price) * Number.parseInt(quantity, 10);
    }
  }
  return String(sum);
}

function dedupId(event, config) {
  return get(event, config.deduplicationKey || "messageId");
}

// The Snapchat event names for the event (after rudderEventsToSnapEvents), normalised.
function eventNamesOf(event, config) {
  if (String(event.type).toLowerCase() === "page") return ["page_view"];
  if (!present(event.event)) throw new DestinationError("Event name is required", 400);
  const name = String(event.event).trim().replace(/\s+/g, "_");
  const mapped = [];
  if (Array.isArray(config.rudderEventsToSnapEvents)) {
    for (const m of config.rudderEventsToSnapEvents) {
      if (typeof m?.from !== "string" || typeof m?.to !== "string") continue;
      if (m.from.trim().replace(/\s+/g, "_").toLowerCase() === name.toLowerCase() && !mapped.includes(m.to)) mapped.push(m.to);
    }
  }
  return (mapped.length > 0 ? mapped : [event.event]).map((n) => String(n).trim().replace(/\s+/g, "_"));
}

function snapName(name) {
  const snap = EVENT_NAMES[name.toLowerCase()];
  if (!snap) throw new DestinationError(`Event ${name} doesn't match with Snapchat Events!`, 400);
  return snap;
}

// ---------- CAPI v2 ----------

function v2Body(event, config, name, type) {
  const key = name.toLowerCase();
  let p = construct(event, V2_TABLES[key] ?? V2_DEFAULT);
  p.event_type = snapName(name);
  if (["product_list_viewed", "checkout_started", "order_completed"].includes(key)) {
    p.item_ids = itemIds(event);
    p.price = p.price || priceSum(event);
  }
  p = { ...p, ...construct(event, V2_COMMON) };
  const lowerTrim = (v) => (present(v) ? hashed(String(v).toLowerCase().trim()) : undefined);
  p.hashed_first_name_sha = lowerTrim(generic(event, "firstName"));
  p.hashed_middle_name_sha = lowerTrim(generic(event, "middleName"));
  p.hashed_last_name_sha = lowerTrim(generic(event, "lastName"));
  p.hashed_city_sha = lowerTrim(generic(event, "city"));
  p.hashed_zip = lowerTrim(generic(event, "zipcode"));
  p.hashed_state_sha = lowerTrim(generic(event, "state"));
  const email = generic(event, "email");
  if (email) p.hashed_email = hashed(String(email).toLowerCase().trim());
  const phone = normalisedPhone(event);
  if (phone) p.hashed_phone_number = hashed(String(phone).toLowerCase().trim());
  const ip = event.context?.ip || event.request_ip;
  if (ip) p.hashed_ip_address = hashed(String(ip).toLowerCase().trim());
  const idfv = event.properties?.idfv || event.context?.device?.id;
  if (APPLE.includes(String(event.context?.device?.type ?? "").toLowerCase()) && idfv) p.hashed_idfv = hashed(idfv);
  const adId = event.properties?.adId || event.context?.device?.advertisingId;
  if (adId) p.hashed_mobile_ad_id = hashed(adId);
  if (!p.hashed_email && !p.hashed_phone_number && !p.hashed_mobile_ad_id && !(p.hashed_ip_address && p.user_agent)) {
    throw new DestinationError("At least one of email or phone or advertisingId or ip and userAgent is required", 400);
  }
  p.timestamp = eventTime(event, config, 37);
  p.data_use = dataUse(event);
  p.event_conversion_type = type;
  if (type === "WEB") {
    p.pixel_id = config.pixelId;
    p.page_url = generic(event, "pageUrl");
  } else if (type === "MOBILE_APP") {
    p.snap_app_id = config.snapAppId;
    p.app_id = config.appId;
  } else {
    p.pixel_id = config.pixelId;
  }
  if (config.enableDeduplication) p.client_dedup_id = dedupId(event, config);
  return dropNulls(p);
}

function processV2(event, config, origin) {
  const type = conversionType(event);
  const requests = eventNamesOf(event, config).map((name) => {
    checkConfigFor(type, config);
    return {
      method: "POST",
      endpoint: `${origin}/v2/conversion`,
      headers: { Authorization: `Bearer ${config.apiKey}`, "Content-Type": "application/json" },
      params: {},
      body: { JSON: v2Body(event, config, name, type) },
    };
  });
  return String(event.type).toLowerCase() === "page" || requests.length > 1 ? requests : requests[0];
}

// ---------- CAPI v3 ----------

// Abbreviations of common zones: [standard, daylight, DST rule].
const ZONES = {
  "Asia/Kolkata": ["IST"], "Asia/Calcutta": ["IST"], "Asia/Tokyo": ["JST"], "Asia/Seoul": ["KST"],
  "Asia/Shanghai": ["CST"], "Asia/Hong_Kong": ["HKT"], "Asia/Karachi": ["PKT"], "Asia/Manila": ["PST"],
  "Asia/Jakarta": ["WIB"], "Asia/Jerusalem": ["IST", "IDT", "il"], "Africa/Johannesburg": ["SAST"],
  "Africa/Lagos": ["WAT"], "Africa/Nairobi": ["EAT"], "Africa/Cairo": ["EET", "EEST", "eg"],
  "Europe/London": ["GMT", "BST", "eu"], "Europe/Dublin": ["GMT", "IST", "eu"], "Europe/Lisbon": ["WET", "WEST", "eu"],
  "Europe/Paris": ["CET", "CEST", "eu"], "Europe/Berlin": ["CET", "CEST", "eu"], "Europe/Madrid": ["CET", "CEST", "eu"],
  "Europe/Rome": ["CET", "CEST", "eu"], "Europe/Amsterdam": ["CET", "CEST", "eu"], "Europe/Brussels": ["CET", "CEST", "eu"],
  "Europe/Vienna": ["CET", "CEST", "eu"], "Europe/Zurich": ["CET", "CEST", "eu"], "Europe/Stockholm": ["CET", "CEST", "eu"],
  "Europe/Oslo": ["CET", "CEST", "eu"], "Europe/Copenhagen": ["CET", "CEST", "eu"], "Europe/Warsaw": ["CET", "CEST", "eu"],
  "Europe/Prague": ["CET", "CEST", "eu"], "Europe/Budapest": ["CET", "CEST", "eu"], "Europe/Athens": ["EET", "EEST", "eu"],
  "Europe/Helsinki": ["EET", "EEST", "eu"], "Europe/Kiev": ["EET", "EEST", "eu"], "Europe/Kyiv": ["EET", "EEST", "eu"],
  "Europe/Bucharest": ["EET", "EEST", "eu"], "Europe/Moscow": ["MSK"], "UTC": ["UTC"], "Etc/UTC": ["UTC"], "GMT": ["GMT"],
  "America/New_York": ["EST", "EDT", "us"], "America/Detroit": ["EST", "EDT", "us"], "America/Toronto": ["EST", "EDT", "us"],
  "America/Chicago": ["CST", "CDT", "us"], "America/Winnipeg": ["CST", "CDT", "us"], "America/Denver": ["MST", "MDT", "us"],
  "America/Edmonton": ["MST", "MDT", "us"], "America/Phoenix": ["MST"], "America/Los_Angeles": ["PST", "PDT", "us"],
  "America/Vancouver": ["PST", "PDT", "us"], "America/Anchorage": ["AKST", "AKDT", "us"], "Pacific/Honolulu": ["HST"],
  "America/Halifax": ["AST", "ADT", "us"], "America/Puerto_Rico": ["AST"], "Australia/Sydney": ["AEST", "AEDT", "au"],
  "Australia/Melbourne": ["AEST", "AEDT", "au"], "Australia/Brisbane": ["AEST"], "Australia/Adelaide": ["ACST", "ACDT", "au"],
  "Australia/Darwin": ["ACST"], "Australia/Perth": ["AWST"], "Pacific/Auckland": ["NZST", "NZDT", "nz"],
};

// Day of month of the n-th (n > 0) or last (n = -1) Sunday of `month` (0-based) in `year`.
function sunday(year, month, n) {
  if (n > 0) {
    const firstDay = new Date(Date.UTC(year, month, 1)).getUTCDay();
    return 1 + ((7 - firstDay) % 7) + (n - 1) * 7;
  }
  const last = new Date(Date.UTC(year, month + 1, 0));
  return last.getUTCDate() - last.getUTCDay();
}

function isDaylight(rule, now) {
  const y = now.getUTCFullYear();
  const t = now.getTime();
  const at = (m, d, h) => Date.UTC(y, m, d, h);
  switch (rule) {
    case "eu": return t >= at(2, sunday(y, 2, -1), 1) && t < at(9, sunday(y, 9, -1), 1);
    case "us": return t >= at(2, sunday(y, 2, 2), 7) && t < at(10, sunday(y, 10, 1), 6);
    case "au": return !(t >= at(3, sunday(y, 3, 1), 16) && t < at(9, sunday(y, 9, 1), 16));
    case "nz": return !(t >= at(3, sunday(y, 3, 1), 14) && t < at(8, sunday(y, 8, -1), 14));
    case "il": return t >= at(2, sunday(y, 2, -1) - 2, 0) && t < at(9, sunday(y, 9, -1), 0);
    case "eg": return t >= at(3, 25, 22) && t < at(9, 30, 21);
    default: return false;
  }
}

function zoneAbbreviation(zone) {
  const z = ZONES[zone];
  if (!z) return "";
  return z[1] && isDaylight(z[2], new Date()) ? z[1] : z[0];
}

function extInfo(event) {
  const v = (path) => {
    const x = get(event, path);
    return x !== undefined && x !== null ? String(x) : "";
  };
  const zone = v("context.timezone");
  return [
    APPLE.includes(String(event.context?.device?.type ?? "").toLowerCase()) ? "i2" : "a2",
    v("context.app.namespace"), v("context.app.build"), v("context.app.version"),
    v("context.os.version"), v("context.device.model"), v("context.locale"),
    zone ? zoneAbbreviation(zone) : "", v("context.network.carrier"),
    v("context.screen.width"), v("context.screen.height"), v("context.screen.density"),
    v("properties.cpu_cores"), v("properties.storage"), v("properties.free_storage"), zone,
  ];
}

function contentsOf(event) {
  const content = (p) =>
    dropNulls({
      id: p?.product_id || p?.sku || p?.id,
      item_price: p?.price,
      quantity: p?.quantity,
      delivery_category: p?.delivery_category,
      brand: p?.brand,
    });
  const products = event.properties?.products;
  if (!Array.isArray(products) || products.length === 0) {
    const c = content(event.properties);
    return Object.keys(c).length === 0 ? [] : [c];
  }
  return products
    .filter((p) => p !== null && typeof p === "object" && !Array.isArray(p))
    .map(content)
    .filter((c) => Object.keys(c).length > 0);
}

function v3Event(event, config, name, type) {
  const key = name.toLowerCase();
  const d = construct(event, V3_TABLES[key] ?? V3_DEFAULT);
  d.event_name = snapName(name);
  if (["product_list_viewed", "checkout_started", "order_completed"].includes(key)) {
    d.custom_data ??= {};
    const ids = itemIds(event);
    if (ids !== null) d.custom_data.content_ids = ids;
    const value = d.custom_data.value || priceSum(event);
    if (value !== null) d.custom_data.value = value;
  }
  const contents = contentsOf(event);
  if (contents.length > 0) {
    d.custom_data ??= {};
    d.custom_data.contents = contents;
  }
  const common = construct(event, V3_COMMON);
  for (const part of ["user_data", "custom_data", "app_data"]) {
    if (common[part]) d[part] = { ...d[part], ...common[part] };
  }
  const hashTrait = (v) => {
    const s = v === undefined || v === null ? "" : String(v).trim().toLowerCase();
    return s ? hashed(s) : undefined;
  };
  const user = {
    ...(d.user_data ?? {}),
    fn: hashTrait(generic(event, "firstName")),
    ln: hashTrait(generic(event, "lastName")),
    ge: hashTrait(generic(event, "gender")),
    ct: hashTrait(generic(event, "city")),
    zp: hashTrait(generic(event, "zipcode")),
    st: hashTrait(generic(event, "state")),
    country: hashTrait(generic(event, "country")),
  };
  const email = generic(event, "emailOnly");
  const em = email === undefined || email === null ? "" : String(email).toLowerCase().trim();
  if (em && (isSha256(em) || /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(em))) user.em = hashed(em);
  const phone = normalisedPhone(event);
  const ph = phone ? String(phone).toLowerCase().trim() : "";
  if (ph) user.ph = hashed(ph);
  d.user_data = dropNulls(user);
  if (!user.em && !user.ph && !user.madid && !(user.client_ip_address && user.client_user_agent)) {
    throw new DestinationError("At least one of email or phone or advertisingId or ip and clientUserAgent is required", 400);
  }
  d.event_time = eventTime(event, config, 7);
  d.data_processing_options = dataUse(event);
  d.action_source = type;
  if (type === "WEB") d.event_source_url = generic(event, "pageUrl");
  if (type === "MOBILE_APP") {
    d.app_data = { ...(d.app_data ?? {}), app_id: config.appId, extinfo: extInfo(event) };
  }
  if (config.enableDeduplication) d.event_id = dedupId(event, config);
  return dropNulls(d);
}

function processV3(event, config, origin) {
  const type = conversionType(event);
  const data = eventNamesOf(event, config).map((name) => {
    checkConfigFor(type, config);
    return v3Event(event, config, name, type);
  });
  const id = type === "MOBILE_APP" ? config.snapAppId : config.pixelId;
  return {
    method: "POST",
    endpoint: `${origin}/v3/${id}/events`,
    headers: { "Content-Type": "application/json" },
    params: { access_token: config.apiKey },
    body: { JSON: { data } },
  };
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.apiKey) throw new DestinationError("API key not found (setting apiKey). Aborting", 400);
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  if (type !== "track" && type !== "page") {
    throw new UnsupportedEventError(`Event type ${type} is not supported: Snapchat takes track and page events`);
  }
  const origin = baseUrl(config.apiBaseUrl, DEFAULT_ORIGIN);
  return config.apiVersion === "newApi" ? processV3(event, config, origin) : processV2(event, config, origin);
}

// ---------- batching ----------

export function batch(requests) {
  const groups = new Map();
  const out = [];
  requests.forEach((r, i) => {
    const v3 = /\/v3\/[^/]+\/events\/?$/.test(r.endpoint ?? "");
    const v2 = /\/v2\/conversion\/?$/.test(r.endpoint ?? "") && r.body?.JSON;
    if (!v3 && !v2) {
      out.push({ request: r, events: [i] });
      return;
    }
    const key = JSON.stringify([r.endpoint, r.headers, r.params]);
    if (!groups.has(key)) groups.set(key, { v3, items: [] });
    groups.get(key).items.push(i);
  });
  for (const { v3, items } of groups.values()) {
    const head = requests[items[0]];
    let chunk = [];
    let body = [];
    const flush = () => {
      if (chunk.length === 0) return;
      out.push({
        request: {
          method: "POST",
          endpoint: head.endpoint,
          headers: head.headers ?? {},
          params: head.params ?? {},
          body: v3 ? { JSON: { data: body } } : { JSON_ARRAY: body },
        },
        events: chunk,
      });
      chunk = [];
      body = [];
    };
    for (const i of items) {
      const part = v3 ? requests[i].body.JSON.data ?? [] : [requests[i].body.JSON];
      if (chunk.length > 0 && body.length + part.length > maxBatchSize) flush();
      chunk.push(i);
      body.push(...part);
    }
    flush();
  }
  out.sort((a, b) => Math.min(...a.events) - Math.min(...b.events));
  return out;
}
