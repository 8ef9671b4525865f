// Google Analytics 4 through the Measurement Protocol
// (POST https://www.google-analytics.com/mp/collect?measurement_id=…&api_secret=…).
// Config (RudderStack's keys): measurementId (G-…), apiSecret, typesOfClient ("gtag", the
// default, or "firebase" with firebaseAppId). Keel extension: apiBaseUrl replaces
// https://www.google-analytics.com (a proxy, or a local server in tests).
// track → a GA4 event (RudderStack's ecommerce names mapped to GA4's), page → page_view,
// identify → login with user_properties, group → join_group. Others are refused (400).
import { DestinationError, pick, eventTimeMs, traitsOf, compact, baseUrl, typeOf } from "keel";

const ECOMMERCE = {
  "products searched": "search",
  "product list viewed": "view_item_list",
  "product viewed": "view_item",
  "product clicked": "select_item",
  "product added": "add_to_cart",
  "product removed": "remove_from_cart",
  "cart viewed": "view_cart",
  "checkout started": "begin_checkout",
  "payment info entered": "add_payment_info",
  "order completed": "purchase",
  "order refunded": "refund",
  "product added to wishlist": "add_to_wishlist",
  "promotion viewed": "view_promotion",
  "promotion clicked": "select_promotion",
  "signed up": "sign_up",
  "product shared": "share",
};

// GA4 event and parameter names: letters, digits and underscores, starting with a letter,
// at most 40 characters.
const gaName = (s) => {
  let n = String(s).trim().replace(/[^A-Za-z0-9_]+/g, "_").replace(/^[^A-Za-z]+/, "");
  return n.slice(0, 40);
};

// Event parameters: scalar values only (strings cut to 100 characters), at most 25.
function params(props) {
  const out = {};
  let n = 0;
  for (const [k, v] of Object.entries(props ?? {})) {
    if (n >= 25) break;
    const key = gaName(k);
    if (!key || v === null || v === undefined) continue;
    if (typeof v === "string") out[key] = v.slice(0, 100);
    else if (typeof v === "number" || typeof v === "boolean") out[key] = v;
    else if (key === "items" && Array.isArray(v)) out[key] = v;
    else continue;
    n++;
  }
  return out;
}

function items(props) {
  const products = Array.isArray(props?.products) ? props.products : props?.product_id ? [props] : [];
  return products.map((p) =>
    compact({
      item_id: p.product_id ?? p.sku ?? p.id,
      item_name: p.name,
      item_category: p.category,
      item_brand: p.brand,
      item_variant: p.variant,
      price: p.price,
      quantity: p.quantity,
      coupon: p.coupon,
      index: p.position,
    }),
  );
}

function userProperties(traits) {
  const out = {};
  for (const [k, v] of Object.entries(traits ?? {})) {
    const key = gaName(k).slice(0, 24);
    if (!key || v === null || v === undefined || typeof v === "object") continue;
    out[key] = { value: typeof v === "string" ? v.slice(0, 36) : v };
  }
  return out;
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  const { measurementId, apiSecret } = config;
  if (!apiSecret) throw new DestinationError("apiSecret is required", 400);
  const firebase = config.typesOfClient === "firebase";
  if (firebase && !config.firebaseAppId) throw new DestinationError("firebaseAppId is required for firebase clients", 400);
  if (!firebase && !measurementId) throw new DestinationError("measurementId is required", 400);

  const type = typeOf(event, ["track", "page", "identify", "group"]);
  const props = event.properties ?? {};
  let name;
  let eventParams;
  if (type === "track") {
    if (!event.event) throw new DestinationError("a track event needs an event name", 400);
    const mapped = ECOMMERCE[String(event.event).toLowerCase()];
    name = mapped ?? gaName(event.event);
    eventParams = params(props);
    if (mapped) {
      const list = items(props);
      if (list.length) eventParams.items = list;
      if (props.revenue !== undefined || props.total !== undefined) eventParams.value = props.revenue ?? props.total;
      if (props.currency) eventParams.currency = props.currency;
      if (props.order_id) eventParams.transaction_id = props.order_id;
    }
  } else if (type === "page") {
    name = "page_view";
    eventParams = params({
      page_location: pick(props, "url") ?? pick(event, "context.page.url"),
      page_title: pick(props, "title") ?? pick(event, "context.page.title") ?? event.name,
      page_referrer: pick(props, "referrer") ?? pick(event, "context.page.referrer"),
    });
  } else if (type === "identify") {
    name = "login";
    eventParams = params({ method: pick(traitsOf(event), "method") });
  } else {
    name = "join_group";
    eventParams = params({ group_id: event.groupId });
  }
  if (!name) throw new DestinationError(`${JSON.stringify(event.event)} is not a valid GA4 event name`, 400);

  const body = {};
  const base = baseUrl(config.apiBaseUrl, "https://www.google-analytics.com");
  const query = { api_secret: apiSecret };
  if (firebase) {
    const appInstanceId = pick(event, "context.ga4.app_instance_id", "integrations.GA4.appInstanceId");
    if (!appInstanceId) throw new DestinationError("firebase clients need context.ga4.app_instance_id", 400);
    body.app_instance_id = appInstanceId;
    query.firebase_app_id = config.firebaseAppId;
  } else {
    const clientId = pick(event, "integrations.GA4.clientId", "context.ga4.client_id", "anonymousId", "userId");
    if (!clientId) throw new DestinationError("a client id is required (anonymousId or integrations.GA4.clientId)", 400);
    body.client_id = String(clientId);
    query.measurement_id = measurementId;
  }
  if (event.userId) body.user_id = String(event.userId);
  const ms = eventTimeMs(event);
  if (ms !== undefined) body.timestamp_micros = ms * 1000;
  const traits = traitsOf(event);
  if (type === "identify" && Object.keys(traits).length) body.user_properties = userProperties(traits);
  body.events = [{ name, params: eventParams }];

  return {
    method: "POST",
    endpoint: `${base}/mp/collect`,
    headers: { "Content-Type": "application/json" },
    params: query,
    body: { JSON: body },
  };
}
