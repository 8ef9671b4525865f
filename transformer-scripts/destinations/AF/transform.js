// AppsFlyer through its server-to-server in-app event API
// (https://dev.appsflyer.com/hc/reference/s2s-events-api3-post), as RudderStack's AF
// destination maps events.
// Endpoints: POST https://api2.appsflyer.com/inappevent/<app id> (authVersion "v1", dev key)
// or POST https://api3.appsflyer.com/inappevent/<app id> (authVersion "v2", S2S token); the
// app id is androidAppId for context.os.name "android", "id" + appleAppId for ios / watchos /
// ipados / tvos.
// Auth: header `authentication: <devKey>` (v1, or no authVersion) or `<s2sKey>` (v2).
// Config (RudderStack's keys): devKey, s2sKey, authVersion ("v1" | "v2"), androidAppId,
// appleAppId, useRichEventName, addPropertiesAtRoot, afCurrencyAtRoot, listOfProps
// [{property}], sharingFilter. Keel extension: apiBaseUrl replaces the origin (both hosts).
// Mapping (every event needs context.externalId of type "appsflyerExternalId", the AppsFlyer
// id; body: eventName, eventValue (a JSON string, "" when empty), eventCurrency, eventTime
// (timestamp), customer_user_id (userId), ip (context.ip, else request_ip), os
// (context.os.version), appsflyer_id, idfa + idfv (Apple) or advertising_id (Android), att,
// app_version_name, bundleIdentifier, sharing_filter):
//   track → eventName = event; eventValue = {properties: {...}} (or the properties at the
//     root with addPropertiesAtRoot; listOfProps lifted to the root), plus af_revenue /
//     af_price / af_quantity and, for the ecommerce events (Order Completed, Product
//     Removed, Checkout Started, Product Added to Wishlist, Wishlist Product Added to Cart,
//     Products Searched, Product Viewed), af_content_id / af_content_type / af_order_id /
//     af_search_string and per-product arrays af_content_id / af_quantity / af_price;
//     af_currency with afCurrencyAtRoot.
//   page / screen → eventName "page" / "screen" (or "Viewed <name> Page|Screen" with
//     useRichEventName), eventValue = the properties as JSON.
//   identify / group / alias → UnsupportedEventError (AppsFlyer's S2S API records in-app
//     events only; it has no user-profile or merge call).
// Batching: none (the S2S API takes one event per request).
// Departures from RudderStack: an empty devKey / s2sKey counts as missing.
import { DestinationError, UnsupportedEventError, baseUrl } from "keel";

const V1_ORIGIN = "https://api2.appsflyer.com";
const V2_ORIGIN = "https://api3.appsflyer.com";
const APPLE = ["ios", "watchos", "ipados", "tvos"];

const CART_OR_WISHLIST = {
  "properties.price": "af_price",
  "properties.category": "af_content_type",
  "properties.product_id": "af_content_id",
  "properties.quantity": "af_quantity",
};
const CONTENT_VIEW = {
  "properties.price": "af_price",
  "properties.category": "af_content_type",
  "properties.product_id": "af_content_id",
};
const DEFAULT = {
  "properties.revenue": "af_revenue",
  "properties.quantity": "af_quantity",
  "properties.price": "af_price",
};
const PURCHASE = {
  "properties.revenue": "af_revenue",
  "properties.price": "af_price",
  "properties.product_id": "af_content_id",
  "properties.category": "af_content_type",
  "properties.quantity": "af_quantity",
  "properties.order_id": "af_order_id",
};
const SEARCH = { "properties.query": "af_search_string" };

// Lower-cased ecommerce event name → its property mapping.
const ECOMMERCE = {
  "wishlist product added to cart": CART_OR_WISHLIST,
  "product added to wishlist": CART_OR_WISHLIST,
  "checkout started": CART_OR_WISHLIST,
  "order completed": PURCHASE,
  "product removed": PURCHASE,
  "products searched": SEARCH,
  "product viewed": CONTENT_VIEW,
};

function get(obj, path) {
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

const present = (v) => v !== undefined && v !== null;
const isApple = (os) => typeof os === "string" && APPLE.includes(os.toLowerCase());
const usable = (v) => Boolean(v) || v === 0 || v === false;

function firstOf(event, paths) {
  for (const p of paths) {
    const v = get(event, p);
    if (usable(v)) return v;
  }
  return null;
}

function dropUndefined(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out;
}

function checkAuth(config) {
  const { authVersion, devKey, s2sKey } = config;
  const has = (v) => present(v) && v !== "";
  if (!present(authVersion) && !has(devKey)) {
    throw new DestinationError("No authentication key is present. Aborting. (devKey)", 400);
  }
  if (authVersion === "v2" && !has(s2sKey)) {
    throw new DestinationError("s2s key is mandatory for v2 authorization. Aborting. (s2sKey)", 400);
  }
  if (authVersion === "v1" && !has(devKey)) {
    throw new DestinationError("dev key is mandatory for v1 authorization. Aborting. (devKey)", 400);
  }
}

function trackPayload(event, config) {
  const name = typeof event.event === "string" ? event.event.toLowerCase() : event.event;
  const mappingJson = ECOMMERCE[name] ?? DEFAULT;
  const multi = Boolean(ECOMMERCE[name]);
  const props = event.properties ? JSON.parse(JSON.stringify(event.properties)) : undefined;
  const safe = props ?? {};
  let value = {};
  if (config.addPropertiesAtRoot) {
    value = safe;
  } else {
    if (Array.isArray(config.listOfProps)) {
      for (const row of config.listOfProps) {
        const key = row?.property;
        value[key] = safe[key];
        delete safe[key];
      }
    }
    value.properties = props;
  }
  // RudderStack's set-value leaves a key alone when the value is undefined.
  for (const [source, dest] of Object.entries(mappingJson)) {
    const v = get(event, source);
    if (v !== undefined) value[dest] = v;
  }
  if (multi && Array.isArray(safe.products) && safe.products.length > 0) {
    value.af_content_id = safe.products.map((p) => p?.product_id);
    value.af_quantity = safe.products.map((p) => p?.quantity);
    value.af_price = safe.products.map((p) => p?.price);
  }
  if (config.afCurrencyAtRoot) value.af_currency = safe.currency;
  value = dropUndefined(value);
  return {
    eventValue: Object.keys(value).length > 0 ? JSON.stringify(value) : "",
    eventName: event.event,
    eventCurrency: event.properties?.currency,
  };
}

function viewPayload(event, eventName) {
  return { eventValue: event.properties ? JSON.stringify(event.properties) : "", eventName };
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  checkAuth(config);
  if (!event.type) throw new DestinationError("message type is not present", 400);
  const type = String(event.type).toLowerCase();
  let payload;
  if (type === "track") {
    payload = trackPayload(event, config);
  } else if (type === "screen") {
    const name = config.useRichEventName === true
      ? `Viewed ${event.name || event.event || get(event, "properties.name") || ""} Screen`
      : "screen";
    payload = viewPayload(event, name);
  } else if (type === "page") {
    const name = config.useRichEventName === true
      ? `Viewed ${event.name || get(event, "properties.name") || ""} Page`
      : "page";
    payload = viewPayload(event, name);
  } else {
    throw new UnsupportedEventError(
      `message type not supported: AppsFlyer's S2S API takes track, page and screen events, not ${type}`,
    );
  }

  const v2 = config.authVersion === "v2";
  const os = get(event, "context.os.name");
  const origin = baseUrl(config.apiBaseUrl, v2 ? V2_ORIGIN : V1_ORIGIN);
  let endpoint;
  if (typeof os === "string" && os.toLowerCase() === "android" && config.androidAppId) {
    endpoint = `${origin}/inappevent/${config.androidAppId}`;
  } else if (isApple(os) && config.appleAppId) {
    endpoint = `${origin}/inappevent/id${config.appleAppId}`;
  } else {
    throw new DestinationError(
      "os name is required along with the respective appId eg. (os->android & Android App Id is required) or (os->ios & Apple App Id is required)",
      400,
    );
  }

  const ids = event.context?.externalId;
  const appsflyerId = Array.isArray(ids) ? ids.find((e) => e?.type === "appsflyerExternalId")?.id : undefined;
  if (!appsflyerId) throw new DestinationError("Appsflyer id is not set. Rejecting the event", 400);

  const body = {
    ...payload,
    eventTime: event.timestamp,
    customer_user_id: firstOf(event, ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"]),
    ip: get(event, "context.ip") || event.request_ip,
    os: get(event, "context.os.version"),
    appsflyer_id: appsflyerId,
  };
  if (isApple(os)) {
    body.idfa = get(event, "context.device.advertisingId");
    body.idfv = get(event, "context.device.id");
  } else {
    body.advertising_id = get(event, "context.device.advertisingId");
  }
  const att = get(event, "context.device.attTrackingStatus");
  if (present(att)) body.att = att;
  const appVersion = get(event, "context.app.version");
  if (present(appVersion)) body.app_version_name = appVersion;
  const bundle = get(event, "context.app.namespace");
  if (present(bundle)) body.bundleIdentifier = bundle;
  const filter = config.sharingFilter;
  if (present(filter) && !(typeof filter === "object" && Object.keys(filter).length === 0) && filter !== "") {
    body.sharing_filter = filter;
  }
  const json = {};
  for (const [k, v] of Object.entries(body)) if (present(v)) json[k] = v;

  return {
    method: "POST",
    endpoint,
    headers: { "Content-Type": "application/json", authentication: v2 ? config.s2sKey : config.devKey },
    params: {},
    body: { JSON: json },
  };
}
