// TikTok Events API (https://business-api.tiktok.com/portal/docs?id=1771100865818625), as
// RudderStack's TIKTOK_ADS destination maps track events.
// Endpoints (https://business-api.tiktok.com/open_api/v1.3):
//   version "v2" (Events API 2.0):
//     POST /event/track/   {event_source, event_source_id: pixelCode, partner_name,
//                           test_event_code?, data: [events]} (up to 1000 events)
//   otherwise (RudderStack's default when `version` is absent: Events API 1.0, pixel events):
//     POST /pixel/track/   one event {pixel_code, event, event_id, timestamp, properties,
//                          context, test_event_code?, partner_name}
//     POST /pixel/batch/   {pixel_code, partner_name, batch: [events with type "track"]}
//                          (up to 50 events)
// Auth: header `Access-Token: <accessToken>`.
// Config (RudderStack's keys): accessToken, pixelCode, version ("v2" or absent for 1.0),
// hashUserProperties, sendCustomEvents, eventsToStandard [{from, to}].
// Keel extension: apiBaseUrl replaces https://business-api.tiktok.com.
// Mapping: track only. The event name (lower-cased, trimmed) goes through eventsToStandard
// (one event may become several TikTok events), else RudderStack's standard names
// (product added → AddToCart, checkout started → InitiateCheckout, order completed →
// PlaceAnOrder, checkout step completed → CompletePayment, product added to wishlist →
// AddToWishlist, payment info entered → AddPaymentInfo, viewcontent, search, download, lead,
// purchase, … → their TikTok names); other names are refused unless sendCustomEvents, when
// they go as given.
//   2.0: event_id (properties.eventId / event_id, else messageId), event_time (seconds),
//     properties (contents, else built from products; contents_ids, num_items, content_type
//     — "product" by default for AddToCart, CompletePayment, PlaceAnOrder, ViewContent —,
//     currency, value, search_string, order_id, shop_id, description, query), page (url,
//     referrer), user (email, phone, external_id (context.externalId tiktokExternalId), ip,
//     user_agent, locale, ttclid, ttp, first_name / last_name / zip_code (always hashed), city,
//     state, country, idfa / idfv / gaid by OS, att_status), app, ad, lead, limited_data_use;
//     event_source from properties.eventSource / event_source (web, app, offline, crm).
//   1.0: pixel event with context.user (external_id, email, phone_number from traits when
//     not in properties.context.user), context.ad.callback (properties.clickId), context.page,
//     ip, user_agent, properties (contents with content_type, default product_group).
//   identify / page / screen / group / alias → skipped (TikTok takes conversion events only).
// Hashing (hashUserProperties): SHA-256 of email (trimmed, lower-cased), phone and
// external_id (trimmed; arrays element by element), and in 2.0 idfa / gaid, as RudderStack.
// Values are hashed as given even when they already look hashed (RudderStack's behaviour:
// turn hashUserProperties off when the source sends hashed values).
// Batching: batch() merges 2.0 events with the same pixel, token and event_source into one
// /event/track/ request (at most 1000 data items), and 1.0 events into /pixel/batch/ (50);
// events with a test_event_code go alone, as RudderStack sends them.
// batchResponse(): TikTok answers HTTP 200 with a `code`: 0 and 20001 (partial success) are
// delivered, 40100 (rate limited) is retried as 429, 5xxxx codes are retried, other codes are
// dead-lettered.
// Departures from RudderStack: RudderStack writes properties.clickId into the event's own
// properties.context.ad object, Keel copies it; unsupported event types are skipped rather
// than failed; batches are cut at TikTok's limits (1000 data items for 2.0, 50 events for 1.0).
import { DestinationError, UnsupportedEventError, baseUrl, sha256 } from "keel";

export const maxBatchSize = 1000;

const API_PATH = "/open_api/v1.3";
const PARTNER_NAME = "RudderStack";
const V1_BATCH_MAX = 50;
const V2_BATCH_MAX = 1000;

const EVENT_NAMES = {
  "product added to wishlist": "AddToWishlist",
  "product added": "AddToCart",
  "checkout started": "InitiateCheckout",
  "payment info entered": "AddPaymentInfo",
  "checkout step completed": "CompletePayment",
  "order completed": "PlaceAnOrder",
  viewcontent: "ViewContent",
  clickbutton: "ClickButton",
  search: "Search",
  contact: "Contact",
  download: "Download",
  submitform: "SubmitForm",
  completeregistration: "CompleteRegistration",
  subscribe: "Subscribe",
  purchase: "Purchase",
  lead: "Lead",
  customizeproduct: "CustomizeProduct",
  findlocation: "FindLocation",
  schedule: "Schedule",
  "application approval": "ApplicationApproval",
  "submit application": "SubmitApplication",
  "start trial": "StartTrial",
};
const WITH_DEFAULT_CONTENT_TYPE = ["AddToCart", "CompletePayment", "PlaceAnOrder", "ViewContent"];
const EVENT_SOURCES = ["web", "app", "offline", "crm"];

// ---------- small helpers ----------

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v || v === 0 || v === false) return v;
  }
  return undefined;
}

const present = (v) => v || v === 0 || v === false;
const notEmpty = (v) =>
  v !== undefined && v !== null && !(typeof v === "string" && v.trim() === "") &&
  !(typeof v === "object" && Object.keys(v).length === 0);

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
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== null) out[k] = v;
  return out;
}

const clone = (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));

const hash = (value) => sha256(String(value));

function externalIdOf(event) {
  const list = event.context?.externalId;
  if (!Array.isArray(list)) return undefined;
  return list.find((e) => e?.type === "tiktokExternalId")?.id;
}

function eventSeconds(event) {
  const ts = first(event, ["timestamp", "originalTimestamp"]);
  if (!present(ts)) throw new DestinationError('Missing required value from "timestamp"', 400);
  if (typeof ts === "number" || /^\d+$/.test(String(ts))) {
    const n = Number(ts);
    return n > 1e11 ? Math.floor(n / 1000) : Math.floor(n);
  }
  const ms = Date.parse(ts);
  if (Number.isNaN(ms)) throw new DestinationError(`Invalid timestamp: ${ts}`, 400);
  return Math.floor(ms / 1000);
}

// eventsToStandard → {lower-cased trimmed from: [to, …]} (duplicates removed).
function standardMap(list) {
  const out = {};
  if (!Array.isArray(list)) return out;
  for (const item of list) {
    const from = item?.from;
    if (typeof from !== "string" || from.trim() === "") continue;
    const key = from.toLowerCase().trim();
    out[key] ??= [];
    if (!out[key].includes(item.to)) out[key].push(item.to);
  }
  return out;
}

// The TikTok event names for the event, each with whether it is a "standard" choice.
function eventNames(event, config) {
  if (!event.event || typeof event.event !== "string") {
    throw new DestinationError("Event is a required field and should be a string", 400);
  }
  const name = event.event.toLowerCase().trim();
  if (!name) throw new DestinationError("Event name is required", 400);
  const map = standardMap(config.eventsToStandard);
  if (!config.sendCustomEvents && EVENT_NAMES[name] === undefined && !map[name]) {
    throw new DestinationError(`Event name (${name}) is not valid, must be mapped to one of standard events`, 400);
  }
  if (map[name]) return map[name];
  return [EVENT_NAMES[name] || event.event];
}

// Contents built from properties.products.
function contentsFromProducts(event, withContentType) {
  const props = event.properties ?? {};
  const products = props.products;
  if (!Array.isArray(products) || products.length === 0) return [];
  return products.map((p) =>
    dropNulls({
      content_type: withContentType
        ? p.contentType || props.contentType || props.content_type || "product"
        : undefined,
      content_id: String(p.product_id),
      content_category: p.category,
      content_name: p.name,
      price: p.price,
      quantity: p.quantity,
      description: p.description,
      brand: p.brand,
    }),
  );
}

// ---------- Events API 2.0 ----------

function v2Data(event, config, eventName) {
  const p = {};
  const set = (path, v) => {
    if (present(v)) setPath(p, path, v);
  };
  const str = (v) => (present(v) ? String(v) : v);
  const trim = (v) => (typeof v === "string" ? v.trim() : v);
  const lower = (v) => (present(v) ? String(v).toLowerCase() : v);
  set("event_id", first(event, ["properties.eventId", "properties.event_id", "messageId"]));
  p.event_time = eventSeconds(event);
  set("limited_data_use", get(event, "properties.limited_data_use"));
  set("properties.contents", clone(get(event, "properties.contents")));
  set("properties.content_type", first(event, ["properties.contentType", "properties.content_type"]));
  set("properties.search_string", first(event, ["properties.query"]));
  set("properties.shop_id", str(first(event, ["properties.shop_id", "properties.shopId"])));
  set("properties.order_id", str(first(event, ["properties.order_id", "properties.orderId"])));
  set("properties.currency", get(event, "properties.currency"));
  set("properties.value", get(event, "properties.value"));
  set("properties.description", get(event, "properties.description"));
  set("properties.query", get(event, "properties.query"));
  set("page.url", first(event, ["properties.context.page.url", "properties.url", "context.page.url"]));
  set("page.referrer", first(event, ["properties.context.page.referrer", "properties.referrer", "context.page.referrer"]));
  set("user.locale", first(event, ["properties.context.user.locale", "context.locale"]));
  set("user.ttclid", get(event, "properties.ttclid"));
  set("user.ttp", first(event, ["properties.context.user.ttp", "properties.ttp"]));
  set("user.email", lower(trim(first(event, [
    "properties.context.user.email", "context.user.email", "traits.email", "context.traits.email", "properties.email",
  ]))));
  set("user.phone", clone(first(event, ["properties.context.user.phone", "traits.phone", "context.traits.phone", "properties.phone"])));
  set("user.ip", first(event, ["properties.context.user.ip", "context.ip", "request_ip"]));
  set("user.user_agent", first(event, ["properties.context.user.userAgent", "context.userAgent"]));
  const firstName = first(event, ["traits.firstName", "traits.firstname", "traits.first_name", "context.traits.firstName", "context.traits.firstname", "context.traits.first_name"]);
  if (present(firstName)) set("user.first_name", hash(lower(trim(firstName))));
  const lastName = first(event, ["traits.lastName", "traits.lastname", "traits.last_name", "context.traits.lastName", "context.traits.lastname", "context.traits.last_name"]);
  if (present(lastName)) set("user.last_name", hash(lower(trim(lastName))));
  set("user.city", first(event, ["context.traits.city", "context.traits.address.city", "properties.city"]));
  set("user.country", first(event, ["context.traits.country", "context.traits.address.country", "properties.country"]));
  set("user.state", first(event, ["context.traits.address.state", "context.traits.state", "properties.state"]));
  const zipKeys = ["zip", "zipcode", "zip_code", "zipCode", "postalcode", "postal_code", "postalCode"];
  const zip = first(event, [
    ...zipKeys.map((k) => `traits.${k}`),
    ...["zipcode", "zip_code", "zip", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `traits.address.${k}`),
    ...zipKeys.map((k) => `context.traits.${k}`),
    ...["zip", "zipcode", "zip_code", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `context.traits.address.${k}`),
  ]);
  if (present(zip)) set("user.zip_code", hash(typeof zip === "string" ? zip.replace(/ /g, "").replace(/-/g, "") : zip));
  const adId = get(event, "context.device.advertisingId");
  set("user.idfa", trim(adId));
  set("user.idfv", get(event, "context.device.id"));
  set("user.gaid", lower(trim(adId)));
  const att = get(event, "properties.att_status");
  if (present(att)) {
    const up = String(att).toUpperCase();
    if (["AUTHORIZED", "DENIED", "NOT_DETERMINED", "RESTRICTED", "NOT_APPLICABLE"].includes(up)) set("user.att_status", up);
  }
  set("app.app_id", first(event, ["properties.appId", "properties.app_id", "context.app.namespace"]));
  set("app.app_name", first(event, ["properties.appName", "properties.app_name", "context.app.name"]));
  set("app.app_version", first(event, ["properties.appVersion", "properties.app_version", "context.app.version"]));
  set("ad.callback", first(event, ["properties.callBack"]));
  set("ad.campaign_id", first(event, ["properties.campaignId", "properties.campaign_id"]));
  set("ad.ad_id", first(event, ["properties.adId", "properties.ad_id"]));
  set("ad.creative_id", first(event, ["properties.creativeId", "properties.creative_id"]));
  set("ad.is_retargeting", first(event, ["properties.isRetargeting", "properties.is_retargeting"]));
  set("ad.attributed", first(event, ["properties.attributed"]));
  set("ad.attribution_type", first(event, ["properties.attributionType", "properties.attribution_type"]));
  set("ad.attribution_provider", first(event, ["properties.attributionProvider", "properties.attribution_provider"]));
  set("lead.lead_id", first(event, ["properties.leadId", "properties.lead_id"]));
  set("lead.lead_event_source", first(event, ["properties.leadEventSource", "properties.lead_event_source"]));

  if (p.properties?.contents && !Array.isArray(p.properties.contents)) {
    p.properties.contents = [p.properties.contents];
  }
  if (!p.properties?.contents && event.properties?.products) {
    p.properties ??= {};
    p.properties.contents = contentsFromProducts(event, false);
  }
  if (p.properties?.contents?.length > 0) {
    const ids = p.properties.contents.map((c) => c?.content_id).filter(Boolean);
    if (ids.length > 0) {
      p.properties.contents_ids = ids;
      p.properties.num_items = ids.length;
    }
  }
  const externalId = externalIdOf(event);
  if (notEmpty(externalId)) setPath(p, "user.external_id", clone(externalId));
  if (config.hashUserProperties && notEmpty(p.user)) p.user = hashUserV2(p.user);
  const os = get(event, "context.os.name");
  if (os !== undefined && os !== null && p.user) {
    const o = String(os).toLowerCase();
    if (["ios", "watchos", "ipados", "tvos"].includes(o)) delete p.user.gaid;
    else if (o === "android") {
      delete p.user.idfa;
      delete p.user.idfv;
    }
  }
  if (!p.properties?.content_type && WITH_DEFAULT_CONTENT_TYPE.includes(eventName)) {
    p.properties ??= {};
    p.properties.content_type = "product";
  }
  p.event = eventName;
  return dropNulls(p);
}

function hashUserV2(user) {
  const out = { ...user };
  const h = (v) => hash(String(v).trim());
  if (user.external_id) {
    out.external_id = Array.isArray(user.external_id) ? user.external_id.map(h) : h(user.external_id);
  }
  if (user.email && user.email.length > 0) out.email = h(user.email);
  if (user.phone && user.phone.length > 0) {
    out.phone = Array.isArray(user.phone) ? user.phone.map(h) : h(user.phone);
  }
  if (user.idfa) out.idfa = h(user.idfa).toLowerCase();
  if (user.gaid) out.gaid = h(user.gaid);
  return out;
}

function eventSource(event) {
  const props = event.properties ?? {};
  if (EVENT_SOURCES.includes(props.eventSource)) return props.eventSource;
  if (EVENT_SOURCES.includes(props.event_source)) return props.event_source;
  return "web";
}

function processV2(event, config, origin) {
  const names = eventNames(event, config);
  const body = {
    event_source: eventSource(event),
    event_source_id: config.pixelCode,
    partner_name: PARTNER_NAME,
  };
  const testCode = event.properties?.testEventCode;
  if (testCode !== undefined && testCode !== null) body.test_event_code = testCode;
  body.data = names.map((n) => v2Data(event, config, n));
  return {
    method: "POST",
    endpoint: `${origin}${API_PATH}/event/track/`,
    headers: { "Access-Token": config.accessToken, "Content-Type": "application/json" },
    params: {},
    body: { JSON: body },
  };
}

// ---------- Events API 1.0 (pixel events) ----------

function v1Payload(event, config, eventName) {
  const p = {};
  const set = (path, v) => {
    if (present(v)) setPath(p, path, v);
  };
  const str = (v) => (present(v) ? String(v) : v);
  set("event_id", first(event, ["properties.eventId", "properties.event_id", "messageId"]));
  set("timestamp", get(event, "timestamp"));
  set("test_event_code", get(event, "properties.testEventCode"));
  set("properties.contents", clone(get(event, "properties.contents")));
  set("properties.content_category", get(event, "properties.category"));
  set("properties.status", get(event, "properties.status"));
  set("properties.content_name", get(event, "properties.name"));
  set("properties.content_id", str(first(event, ["properties.product_id", "properties.productId"])));
  set("properties.shop_id", str(first(event, ["properties.shop_id", "properties.shopId"])));
  set("properties.order_id", str(first(event, ["properties.order_id", "properties.orderId"])));
  set("properties.content_type", first(event, ["properties.contentType", "properties.content_type"]));
  set("properties.currency", get(event, "properties.currency"));
  set("properties.value", get(event, "properties.value"));
  set("properties.description", get(event, "properties.description"));
  set("properties.query", get(event, "properties.query"));
  set("context.ad", clone(first(event, ["properties.context.ad", "context.ad"])));
  set("context.ad.callback", get(event, "properties.clickId"));
  set("context.page", clone(first(event, ["properties.context.page", "context.page"])));
  set("context.user", clone(get(event, "properties.context.user")));
  set("context.ip", first(event, ["context.ip", "request_ip"]));
  set("context.user_agent", get(event, "context.userAgent"));

  if (p.properties?.contents && !Array.isArray(p.properties.contents)) {
    p.properties.contents = [p.properties.contents];
  }
  if (p.properties && !p.properties.contents && event.properties?.products) {
    p.properties = { ...p.properties, contents: contentsFromProducts(event, true) };
  }
  if (Array.isArray(p.properties?.contents)) {
    for (const c of p.properties.contents) {
      if (c && typeof c === "object" && !c.content_type) c.content_type = event.properties?.contentType || "product_group";
    }
  }
  const externalId = externalIdOf(event);
  if (notEmpty(externalId)) setPath(p, "context.user.external_id", clone(externalId));
  const traits = first(event, ["traits", "context.traits"]);
  if (!notEmpty(get(p, "context.user.email")) && traits?.email) setPath(p, "context.user.email", traits.email);
  if (!notEmpty(get(p, "context.user.phone_number")) && traits?.phone) setPath(p, "context.user.phone_number", traits.phone);

  const out = { pixel_code: config.pixelCode, event: eventName, ...p };
  if (config.hashUserProperties) {
    const user = out.context?.user;
    if (user) {
      if (notEmpty(user.external_id)) {
        user.external_id = Array.isArray(user.external_id)
          ? user.external_id.map((x) => hash(String(x).trim()))
          : hash(String(user.external_id).trim());
      }
      if (notEmpty(user.email)) user.email = hash(String(user.email).trim().toLowerCase());
      if (notEmpty(user.phone_number)) user.phone_number = hash(String(user.phone_number).trim());
    }
  }
  return dropNulls({ ...out, partner_name: PARTNER_NAME });
}

function processV1(event, config, origin) {
  return eventNames(event, config).map((name) => ({
    method: "POST",
    endpoint: `${origin}${API_PATH}/pixel/track/`,
    headers: { "Access-Token": config.accessToken, "Content-Type": "application/json" },
    params: {},
    body: { JSON: v1Payload(event, config, name) },
  }));
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.accessToken) throw new DestinationError("Access Token not found. Aborting (setting accessToken)", 400);
  if (!config.pixelCode) throw new DestinationError("Pixel Code not found. Aborting (setting pixelCode)", 400);
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  if (type !== "track") {
    throw new UnsupportedEventError(`Event type ${type} is not supported: TikTok's Events API takes track events only`);
  }
  const origin = baseUrl(config.apiBaseUrl, "https://business-api.tiktok.com");
  if (config.version === "v2") return processV2(event, config, origin);
  const list = processV1(event, config, origin);
  return list.length === 1 ? list[0] : list;
}

// ---------- batching ----------

function isV2(r) {
  return /\/event\/track\/?$/.test(r.endpoint ?? "");
}

export function batch(requests) {
  const out = [];
  const groups = new Map();
  requests.forEach((r, i) => {
    const body = r.body?.JSON ?? {};
    if (body.test_event_code !== undefined || !/\/(event|pixel)\/track\/?$/.test(r.endpoint ?? "")) {
      out.push({ request: r, events: [i] });
      return;
    }
    const v2 = isV2(r);
    const key = JSON.stringify([
      v2, r.endpoint, r.headers?.["Access-Token"], v2 ? body.event_source_id : body.pixel_code, v2 ? body.event_source : "",
    ]);
    if (!groups.has(key)) groups.set(key, { v2, items: [] });
    groups.get(key).items.push(i);
  });
  for (const { v2, items } of groups.values()) {
    const head = requests[items[0]];
    const headers = head.headers ?? {};
    if (v2) {
      const hb = head.body.JSON;
      let chunk = [];
      let data = [];
      const flush = () => {
        if (chunk.length === 0) return;
        out.push({
          request: {
            method: "POST",
            endpoint: head.endpoint,
            headers,
            params: {},
            body: { JSON: { event_source_id: hb.event_source_id, event_source: hb.event_source, partner_name: PARTNER_NAME, data } },
          },
          events: chunk,
        });
        chunk = [];
        data = [];
      };
      for (const i of items) {
        const d = requests[i].body.JSON.data ?? [];
        if (chunk.length > 0 && data.length + d.length > V2_BATCH_MAX) flush();
        chunk.push(i);
        data.push(...d);
      }
      flush();
    } else {
      const endpoint = head.endpoint.replace(/\/pixel\/track\/?$/, "/pixel/batch/");
      for (let s = 0; s < items.length; s += V1_BATCH_MAX) {
        const chunk = items.slice(s, s + V1_BATCH_MAX);
        const list = chunk.map((i) => {
          const { pixel_code: _p, partner_name: _n, ...rest } = requests[i].body.JSON;
          return { ...rest, type: "track" };
        });
        out.push({
          request: {
            method: "POST",
            endpoint,
            headers,
            params: {},
            body: { JSON: { pixel_code: head.body.JSON.pixel_code, partner_name: PARTNER_NAME, batch: list } },
          },
          events: chunk,
        });
      }
    }
  }
  out.sort((a, b) => Math.min(...a.events) - Math.min(...b.events));
  return out;
}

export function batchResponse(response, requests) {
  const ok = response.status >= 200 && response.status < 300;
  const body = response.body;
  if (!ok || !body || typeof body !== "object" || body.code === undefined) return requests.map(() => null);
  const code = Number(body.code);
  if (code === 0 || code === 20001) return requests.map(() => null);
  const error = `TikTok answered code ${body.code}: ${body.message ?? JSON.stringify(body)}`;
  let status = 400;
  if (code === 40100) status = 429;
  else if (code >= 50000) status = 500;
  return requests.map(() => ({ status, error }));
}
