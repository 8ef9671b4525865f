// Meta (Facebook) Conversions API (https://developers.facebook.com/docs/marketing-api/conversions-api),
// as RudderStack's FACEBOOK_CONVERSIONS destination maps events.
// Endpoint: POST https://graph.facebook.com/v25.0/<datasetId>/events?access_token=<accessToken>
//   form body: data = JSON array of server events, test_event_code (testDestination).
// Auth: the system user access token in the `access_token` query parameter.
// Config (RudderStack's keys): datasetId, accessToken, actionSource, removeExternalId,
// limitedDataUsage (RudderStack's code reads "limitedDataUSage"; both are honoured),
// testDestination + testEventCode, eventsToEvents [{from, to}], categoryToContent
// [{from, to}], blacklistPiiProperties [{blacklistPiiProperties, blacklistPiiHash}],
// whitelistPiiProperties [{whitelistPiiProperties}].
// Keel extensions: apiBaseUrl replaces https://graph.facebook.com; validateEventTime (default
// true) — false turns off the local "within 7 days (62 for physical_store) / at most one
// minute ahead" check (Meta checks it too).
// Mapping (one server event per RudderStack event):
//   track → event_name: a standard event when the event (or its eventsToEvents mapping)
//     is an ecommerce spec name — Products Searched → Search, Product Viewed / Product List
//     Viewed → ViewContent, Product Added → AddToCart, Product Added to Wishlist →
//     AddToWishlist, Payment Info Entered → AddPaymentInfo, Checkout Started →
//     InitiateCheckout, Order Completed → Purchase (with content_ids, contents, content_type,
//     content_category, num_items); a mapping to Lead, CompleteRegistration, Contact,
//     CustomizeProduct, Donate, FindLocation, Schedule, StartTrial, SubmitApplication,
//     Subscribe or PageView uses that name; other events keep their own name.
//   page / screen → PageView.
//   Every event: user_data (external_id, em, ph, ge, db, fn, ln, ct, st, zp, country hashed
//   with SHA-256; client_ip_address, client_user_agent, fbc (else derived from the page
//   URL's fbclid), fbp, subscription_id, lead_id, fb_login_id, madid, anon_id), event_time
//   (seconds), event_source_url, opt_out, event_id (else messageId), action_source (event,
//   else config), data_processing_options (limitedDataUsage), app_data (action_source
//   "app"), custom_data (properties without default PII keys unless whitelisted; blacklisted
//   ones removed or hashed; value, currency (USD default)).
//   identify / group / alias → skipped (the Conversions API takes events only).
// Hashing: values are normalised as Meta asks before hashing — em trimmed + lower-cased; ph
// digits only without leading zeros; fn / ln trimmed + lower-cased; ct / st / country
// lower-cased without spaces or punctuation; zp lower-cased without spaces or dashes (US
// ZIP+4 cut to 5 digits); db YYYYMMDD; ge f / m; external_id trimmed. A value that already
// is a SHA-256 hex digest is sent as it is (never hashed twice), and with
// integrations.FacebookConversions.hashed = true nothing is hashed (RudderStack's switch).
// Batching: batch() merges events for the same dataset, token and test code into one request
// (`data` holds up to 1000 events, Meta's limit). Meta rejects a whole batch when one event
// is invalid; set maxBatchSize 1 to send events one by one as RudderStack does.
// batchResponse(): Meta answers errors as {error: {code, error_subcode, message,
// error_user_msg}} mostly with HTTP 400; throttling codes (4, 17, 32, 613, 80003, 80004)
// become 429 and transient ones (1, 2, 341, 368, 5000, 21009, is_transient) 500, as
// RudderStack's network handler classes them.
// Departures from RudderStack: `data` is sent as an array of event objects (the form field
// text is the JSON array, which is what RudderStack's server puts on the wire for its
// one-string array); phone, names, city, state, zip, country and birthday are normalised
// before hashing (RudderStack hashes phone and birthday as given and the two halves of
// traits.name without lower-casing); already-hashed values are not hashed again; a numeric
// (epoch milliseconds) timestamp is converted to seconds.
import { DestinationError, UnsupportedEventError, baseUrl, sha256, isSha256, isSet } from "keel";

export const maxBatchSize = 1000;

const VERSION = "v25.0";
const ACTION_SOURCES = ["email", "website", "app", "phone_call", "chat", "physical_store", "system_generated", "other"];
const OTHER_STANDARD_EVENTS = [
  "Lead", "CompleteRegistration", "Contact", "CustomizeProduct", "Donate", "FindLocation",
  "Schedule", "StartTrial", "SubmitApplication", "Subscribe",
];
const DEFAULT_PII = [
  "email", "firstName", "lastName", "firstname", "lastname", "first_name", "last_name",
  "gender", "city", "country", "phone", "state", "zip", "postalCode", "birthday",
];
const INTEGRATION_NAMES = [
  "fb_conversions", "fb conversions", "FacebookConversions", "Facebook Conversions",
  "FB Conversions", "Facebook_Conversions",
];
const REVENUE_KEYS = ["properties.revenue", "properties.value", "properties.price", "properties.total"];

// Standard ecommerce categories: the lower-cased spec name, Meta's event, the custom data
// fields the category maps.
const ECOMMERCE = [
  { type: "product list viewed", eventName: "ViewContent" },
  { type: "product viewed", eventName: "ViewContent" },
  { type: "product added", eventName: "AddToCart" },
  { type: "order completed", eventName: "Purchase" },
  { type: "products searched", eventName: "Search" },
  { type: "checkout started", eventName: "InitiateCheckout" },
  { type: "payment info entered", eventName: "AddPaymentInfo" },
  { type: "product added to wishlist", eventName: "AddToWishlist" },
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

// RudderStack's getValueFromMessage: the first value that is truthy, 0 or false.
function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v || v === 0 || v === false) return v;
  }
  return undefined;
}

const present = (v) => v || v === 0 || v === false;

function integrationsObj(event) {
  for (const name of INTEGRATION_NAMES) {
    const v = event.integrations?.[name];
    if (v) return v;
  }
  return null;
}

// [{from, to}] → {from (lower-cased unless told): to}, skipping empty `from`s.
function hashOf(list, lower = true) {
  const out = {};
  if (!Array.isArray(list)) return out;
  for (const item of list) {
    const from = item?.from;
    if (from === undefined || from === null || String(from).trim() === "") continue;
    out[lower ? String(from).toLowerCase() : from] = item.to;
  }
  return out;
}

// RudderStack's numberForRevenue: "$12.5" → 12.5, two decimals.
function revenue(v) {
  let x = v;
  if (typeof x === "string" && x.charAt(0) === "$") x = x.substring(1);
  const n = Number.parseFloat(Number(x || 0).toFixed(2));
  if (Number.isNaN(n)) throw new DestinationError("Revenue is not in the correct format", 400);
  return n;
}

// Seconds since the epoch of the event's time.
function eventTimeSeconds(event) {
  const ts = first(event, ["timestamp", "originalTimestamp"]);
  if (!isSet(ts)) return undefined;
  if (typeof ts === "number" || /^\d+$/.test(String(ts))) {
    const n = Number(ts);
    return n > 1e11 ? Math.floor(n / 1000) : Math.floor(n);
  }
  const ms = Date.parse(ts);
  if (Number.isNaN(ms)) throw new DestinationError(`Invalid timestamp: ${ts}`, 400);
  return Math.floor(ms / 1000);
}

// ---------- hashing ----------

function makeHasher(event) {
  const skip = integrationsObj(event)?.hashed === true;
  const hash = (value) => {
    const s = String(value);
    if (skip || isSha256(s)) return s;
    return sha256(s);
  };
  hash.skip = skip;
  return hash;
}

const NORMALISE = {
  em: (v) => String(v).trim().toLowerCase(),
  ph: (v) => String(v).replace(/\D/g, "").replace(/^0+/, ""),
  fn: (v) => String(v).trim().toLowerCase(),
  ln: (v) => String(v).trim().toLowerCase(),
  ct: (v) => String(v).toLowerCase().replace(/[^\p{L}\p{N}]/gu, ""),
  st: (v) => String(v).toLowerCase().replace(/[^\p{L}\p{N}]/gu, ""),
  country: (v) => String(v).toLowerCase().replace(/[^\p{L}\p{N}]/gu, ""),
  zp: (v) => {
    const s = String(v).trim().toLowerCase();
    const us = /^(\d{5})-\d{4}$/.exec(s);
    return us ? us[1] : s.replace(/[\s-]/g, "");
  },
  db: (v) => {
    const s = String(v).trim();
    const m = /^(\d{4})-?(\d{2})-?(\d{2})(?:$|[T\s])/.exec(s);
    return m ? `${m[1]}${m[2]}${m[3]}` : s;
  },
  external_id: (v) => String(v).trim(),
};

function hashField(key, value, hash) {
  const s = String(value);
  if (hash.skip) return s;
  if (isSha256(s.trim())) return s.trim();
  return hash(NORMALISE[key] ? NORMALISE[key](s) : s);
}

function gender(value, hash) {
  if (typeof value !== "string") return undefined;
  if (isSha256(value)) return value;
  const g = value.toUpperCase();
  if (["FEMALE", "F", "WOMAN"].includes(g)) return hash("f");
  if (["MALE", "M", "MAN"].includes(g)) return hash("m");
  return undefined;
}

// fbc from the page URL's fbclid: fb.1.<event time ms>.<fbclid>.
function fbcFromUrl(event) {
  const url = event.context?.page?.url;
  if (!url) return undefined;
  // (V8 alone has no URL class: read the query string by hand.)
  const query = String(url).split("#")[0].split("?").slice(1).join("?");
  let fbclid;
  for (const pair of query.split("&")) {
    const [k, ...rest] = pair.split("=");
    if (k === "fbclid") {
      try {
        fbclid = decodeURIComponent(rest.join("=").replace(/\+/g, " "));
      } catch {
        fbclid = rest.join("=");
      }
      break;
    }
  }
  if (!fbclid) return undefined;
  const ts = first(event, ["timestamp", "originalTimestamp"]);
  const ms = typeof ts === "number" ? ts : Date.parse(ts);
  return `fb.1.${ms}.${fbclid}`;
}

function userData(event, config) {
  const hash = makeHasher(event);
  const t = (k) => [`traits.${k}`, `context.traits.${k}`];
  const ud = {};
  const put = (key, value) => {
    if (present(value)) ud[key] = value;
  };
  const hashed = (key, paths) => {
    const v = first(event, paths);
    if (present(v)) ud[key] = hashField(key, v, hash);
  };
  hashed("external_id", ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id", "anonymousId"]);
  hashed("em", t("email"));
  hashed("ph", t("phone"));
  put("ge", gender(first(event, t("gender")), hash));
  hashed("db", t("birthday"));
  hashed("ln", [...t("lastname"), ...t("lastName"), ...t("last_name")].sort(traitsFirst));
  hashed("fn", [...t("firstname"), ...t("firstName"), ...t("first_name")].sort(traitsFirst));
  const name = first(event, t("name"));
  hashed("ct", t("address.city"));
  hashed("st", t("address.state"));
  hashed("zp", [...t("address.zip"), ...t("address.postalCode")]);
  hashed("country", t("address.country"));
  put("client_ip_address", first(event, ["context.ip", "request_ip"]));
  put("client_user_agent", first(event, ["context.userAgent"]));
  put("fbc", first(event, ["context.fbc", "properties.fbc"]));
  put("fbp", first(event, ["context.fbp", "properties.fbp"]));
  put("subscription_id", first(event, ["context.subscription_id"]));
  put("lead_id", first(event, ["context.lead_id"]));
  put("fb_login_id", first(event, ["context.fb_login_id"]));
  put("madid", first(event, ["context.device.advertisingId"]));
  put("anon_id", first(event, ["properties.anon_id", "context.device.advertisingId"]));
  if (config.removeExternalId) delete ud.external_id;
  if (present(name)) {
    const parts = String(name).split(" ");
    if (parts.length === 2) {
      ud.fn = hashField("fn", parts[0], hash);
      ud.ln = hashField("ln", parts[1], hash);
    }
  }
  if (!ud.fbc) {
    const fbc = fbcFromUrl(event);
    if (fbc) ud.fbc = fbc;
  }
  return ud;
}

// traits.* paths before context.traits.* (RudderStack's source key order).
function traitsFirst(a, b) {
  return (a.startsWith("context.") ? 1 : 0) - (b.startsWith("context.") ? 1 : 0);
}

// ---------- custom data ----------

function piiFiltered(event, custom, config, hash) {
  const whitelist = (Array.isArray(config.whitelistPiiProperties) ? config.whitelistPiiProperties : [])
    .map((p) => p?.whitelistPiiProperties);
  const blacklist = {};
  for (const p of Array.isArray(config.blacklistPiiProperties) ? config.blacklistPiiProperties : []) {
    if (p && isSet(p.blacklistPiiProperties)) blacklist[p.blacklistPiiProperties] = p.blacklistPiiHash;
  }
  const out = { ...custom };
  for (const key of Object.keys(out)) {
    const isDefault = DEFAULT_PII.includes(key) && !whitelist.includes(key);
    if (Object.hasOwn(blacklist, key)) {
      if (blacklist[key]) out[key] = hash(String(event.properties[key]));
      else if (isDefault) delete out[key];
    } else if (isDefault) {
      delete out[key];
    }
  }
  return out;
}

function contentCategory(category) {
  let c = category;
  if (Array.isArray(c)) c = c.map(String).join(",");
  if (c && typeof c !== "string" && typeof c !== "object") c = String(c);
  if (c && typeof c === "object") {
    throw new DestinationError("'properties.category' must be either be a string or an array", 400);
  }
  return c;
}

function contentType(event, fallback, config) {
  const integ = integrationsObj(event);
  if (integ?.contentType) return integ.contentType;
  const props = event.properties ?? {};
  let category = props.category;
  const products = props.products;
  if (!category && Array.isArray(products) && products.length > 0 && products[0] && typeof products[0] === "object") {
    category = products[0].category;
  }
  if (Array.isArray(config.categoryToContent) && category) {
    const map = hashOf(config.categoryToContent, false);
    if (map[category]) return map[category];
  }
  return fallback;
}

function contentsOf(products, fallbackQuantity, fallbackDelivery) {
  const contentIds = [];
  const contents = [];
  if (Array.isArray(products)) {
    for (const p of products) {
      if (!p || typeof p !== "object" || Array.isArray(p)) continue;
      const id = p.product_id || p.sku || p.id;
      if (!id) continue;
      contentIds.push(id);
      contents.push({
        id,
        quantity: p.quantity || fallbackQuantity || 1,
        item_price: p.price,
        delivery_category: p.delivery_category || fallbackDelivery,
      });
    }
  }
  return { contentIds, contents };
}

// The category's own fields (RudderStack's per-category mapping files).
function categoryFields(event, type) {
  const p = event.properties ?? {};
  const out = {};
  const set = (k, v) => {
    if (present(v)) out[k] = v;
  };
  const value = first(event, REVENUE_KEYS);
  const currency = p.currency || "USD";
  if (type === "simple") {
    if (present(value)) out.value = revenue(value);
    out.currency = currency;
    return out;
  }
  out.content_ids = [];
  out.contents = [];
  if (type !== "payment info entered" && type !== "product added to wishlist") out.content_type = "product";
  set("content_category", p.category);
  if (type === "product added" || type === "product viewed" || type === "product added to wishlist") {
    set("content_name", first(event, ["properties.name", "properties.product_name"]));
  } else if (type === "order completed" || type === "product list viewed") {
    set("content_name", first(event, ["properties.content_name", "properties.contentName"]));
  }
  out.currency = currency;
  if (present(value)) out.value = revenue(value);
  if (type === "products searched") set("search_string", p.query);
  return out;
}

function productsOf(event, type) {
  let products = event.properties?.products;
  if (["product added", "product viewed", "products searched"].includes(type)) return [event.properties];
  if (["payment info entered", "product added to wishlist"].includes(type) && !Array.isArray(products)) {
    products = [event.properties];
  }
  return products;
}

function categoryData(event, category, config) {
  const type = category.type;
  let data = categoryFields(event, ECOMMERCE.some((c) => c.type === type) ? type : "simple");
  const props = event.properties ?? {};
  const products = productsOf(event, type);
  switch (type) {
    case "product list viewed": {
      const { contentIds, contents } = contentsOf(products, props.quantity);
      const cat = data.content_category;
      let fallback;
      if (contentIds.length > 0) {
        fallback = "product";
      } else if (cat) {
        contentIds.push(cat);
        contents.push({ id: cat, quantity: 1 });
        fallback = "product_group";
      }
      data = {
        ...data,
        content_ids: contentIds,
        contents,
        content_type: props.content_type || contentType(event, fallback, config),
        content_category: contentCategory(cat),
      };
      break;
    }
    case "product added":
    case "product viewed":
    case "products searched": {
      const { contentIds, contents } = contentsOf(products);
      data = {
        ...data,
        content_ids: contentIds.length === 1 ? contentIds[0] : contentIds,
        contents,
        content_type: props.content_type || contentType(event, data.content_type, config),
        content_category: contentCategory(data.content_category),
      };
      const q = data.search_string;
      if (q && !["string", "number", "boolean"].includes(typeof q)) {
        throw new DestinationError("'query' should be in string format only", 400);
      }
      break;
    }
    case "payment info entered":
    case "product added to wishlist":
    case "order completed":
    case "checkout started": {
      const { contentIds, contents } = contentsOf(products, props.quantity, props.delivery_category);
      data = {
        ...data,
        content_ids: contentIds,
        contents,
        content_type: props.content_type || contentType(event, data.content_type, config),
        content_category: contentCategory(data.content_category),
        num_items: contentIds.length,
      };
      break;
    }
    default:
      break;
  }
  return data;
}

// ---------- app data ----------

function appData(event) {
  const required = (v, path) => {
    if (!present(v)) throw new DestinationError(`Missing required value from ${JSON.stringify(path)}`, 400);
    return v;
  };
  const ctx = event.context ?? {};
  const out = {
    advertiser_tracking_enabled: required(ctx.device?.adTrackingEnabled, "context.device.adTrackingEnabled"),
    application_tracking_enabled: required(event.properties?.application_tracking_enabled, "properties.application_tracking_enabled"),
  };
  const deviceType = String(required(ctx.device?.type, "context.device.type")).toLowerCase();
  let sdk;
  if (deviceType === "android") sdk = "a2";
  else if (["ios", "watchos", "ipados", "tvos"].includes(deviceType)) sdk = "i2";
  else {
    throw new DestinationError(
      'Extended device information i.e, "context.device.type" is not a valid value. It should be either android or ios/watchos/ipados/tvos',
      400,
    );
  }
  const ext = [
    sdk, ctx.app?.namespace, ctx.app?.build, ctx.app?.version,
    required(ctx.os?.version, "context.os.version"), ctx.device?.model, ctx.locale,
    ctx.abv_timezone, ctx.network?.carrier, ctx.screen?.width, ctx.screen?.height,
    ctx.screen?.density, ctx.cpu_cores, ctx.ext_storage_size, ctx.avl_storage_size, ctx.timezone,
  ];
  out.extinfo = ext.map((v) => (present(v) ? v : ""));
  const optional = {
    campaign_ids: first(event, ["properties.campaignId", "context.traits.campaignId", "context.campaign.name"]),
    install_referrer: event.properties?.install_referrer,
    installer_package: event.properties?.installer_package,
    url_schemes: event.properties?.url_schemes,
    windows_attribution_id: event.properties?.windows_attribution_id,
  };
  for (const [k, v] of Object.entries(optional)) if (present(v)) out[k] = v;
  return out;
}

// ---------- event ----------

function categoryOf(name) {
  const ecommerce = ECOMMERCE.find((c) => name === c.type || name === c.eventName);
  if (ecommerce) return { standard: true, ...ecommerce };
  if (OTHER_STANDARD_EVENTS.includes(name)) return { standard: true, type: "otherStandard", eventName: name };
  if (name === "PageView") return { standard: true, type: "page_view", eventName: "PageView" };
  return { standard: false, type: "simple track" };
}

function checkEventTime(event, seconds) {
  const actionSource = first(event, ["traits.action_source", "context.traits.action_source", "properties.action_source"]);
  const maxDays = actionSource === "physical_store" ? 62 : 7;
  if (seconds === undefined) return;
  const now = Math.floor(Date.now() / 1000);
  const pastDays = Math.ceil((now - seconds) / 86400);
  const futureMinutes = Math.ceil((seconds - now) / 60);
  if (pastDays > maxDays || futureMinutes > 1) {
    throw new DestinationError(
      `Events must be sent within ${maxDays} days of their occurrence or up to one minute in the future.`,
      400,
    );
  }
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.datasetId) throw new DestinationError("Dataset Id not found (setting datasetId). Aborting", 400);
  if (!config.accessToken) throw new DestinationError("Access token not found (setting accessToken). Aborting", 400);
  if (!event.type) throw new DestinationError("'type' is missing", 400);
  const type = String(event.type).toLowerCase();
  if (!["track", "page", "screen"].includes(type)) {
    throw new UnsupportedEventError(`Message type ${type} not supported: the Conversions API takes track, page and screen events`);
  }
  const seconds = eventTimeSeconds(event);
  if (config.validateEventTime !== false) checkEventTime(event, seconds);

  let category;
  if (type === "track") {
    if (!event.event || typeof event.event !== "string") {
      throw new DestinationError("'event' is required and should be a string", 400);
    }
    const mapped = hashOf(config.eventsToEvents)[event.event.toLowerCase()];
    category = categoryOf(mapped || event.event.toLowerCase());
  } else {
    category = { standard: true, type: "page_view", eventName: "PageView" };
  }

  const hash = makeHasher(event);
  const ud = userData(event, config);

  const eventName = category.standard ? category.eventName : event.event || event.type;
  if (!eventName) throw new DestinationError('Missing required value from ["event","type"]', 400);
  if (seconds === undefined) throw new DestinationError('Missing required value from "timestamp"', 400);
  const common = { event_name: eventName, event_time: seconds };
  const url = first(event, ["context.page.url", "properties.url"]);
  if (present(url)) common.event_source_url = url;
  const optOut = first(event, ["traits.opt_out", "context.traits.opt_out", "properties.opt_out"]);
  if (present(optOut)) common.opt_out = optOut;
  const eventId = first(event, ["traits.event_id", "context.traits.event_id", "properties.event_id", "messageId"]);
  if (present(eventId)) common.event_id = eventId;
  const actionSource = first(event, ["traits.action_source", "context.traits.action_source", "properties.action_source"]);
  if (present(actionSource)) {
    if (!ACTION_SOURCES.includes(actionSource)) throw new DestinationError("Invalid Action Source type", 400);
    common.action_source = actionSource;
  } else if (config.actionSource) {
    common.action_source = config.actionSource;
  }

  let custom = {};
  const props = event.properties;
  if (props && typeof props === "object") {
    for (const [k, v] of Object.entries(props)) {
      if (["opt_out", "event_id", "action_source"].includes(k)) continue;
      if (v !== undefined) custom[k] = v;
    }
  }
  custom = piiFiltered(event, custom, config, hash);
  custom = { ...custom, ...categoryData(event, category, config) };

  if (config.limitedDataUsage || config.limitedDataUSage) {
    const dpo = event.context?.dataProcessingOptions;
    if (Array.isArray(dpo)) {
      [common.data_processing_options, common.data_processing_options_country, common.data_processing_options_state] = dpo;
    }
  }

  const serverEvent = { user_data: ud, ...common };
  if (common.action_source === "app") serverEvent.app_data = appData(event);
  const customData = JSON.parse(JSON.stringify(custom));
  if (Object.keys(customData).length > 0) serverEvent.custom_data = customData;

  const form = { data: [JSON.parse(JSON.stringify(serverEvent))] };
  if (config.testDestination) form.test_event_code = config.testEventCode;
  const origin = baseUrl(config.apiBaseUrl, "https://graph.facebook.com");
  return {
    method: "POST",
    endpoint: `${origin}/${VERSION}/${config.datasetId}/events?access_token=${config.accessToken}`,
    headers: {},
    params: {},
    body: { FORM: form },
  };
}

// ---------- batching ----------

export function batch(requests) {
  const groups = new Map();
  requests.forEach((r, i) => {
    const key = `${r.endpoint}\n${r.body?.FORM?.test_event_code ?? ""}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  });
  const out = [];
  for (const indices of groups.values()) {
    for (let s = 0; s < indices.length; s += maxBatchSize) {
      const chunk = indices.slice(s, s + maxBatchSize);
      const head = requests[chunk[0]];
      const form = { data: chunk.flatMap((i) => requests[i].body?.FORM?.data ?? []) };
      if (isSet(head.body?.FORM?.test_event_code)) form.test_event_code = head.body.FORM.test_event_code;
      out.push({
        request: { method: "POST", endpoint: head.endpoint, headers: head.headers ?? {}, params: head.params ?? {}, body: { FORM: form } },
        events: chunk,
      });
    }
  }
  return out;
}

const THROTTLED = [4, 17, 32, 613, 80003, 80004];
const TRANSIENT = [1, 2, 341, 368, 5000, 21009];
const PERMANENT = [3, 100, 105, 190, 200, 294, 2650, 2655, 1487301, 1487366];

export function batchResponse(response, requests) {
  const ok = response.status >= 200 && response.status < 300;
  const error = response.body && typeof response.body === "object" ? response.body.error : undefined;
  if (ok || !error || typeof error !== "object") return requests.map(() => null);
  const code = Number(error.code);
  const text = `${error.error_user_msg || error.message || JSON.stringify(error)}. Facebook responded with error code: ${error.code}${error.error_subcode ? ` and sub-code: ${error.error_subcode}` : ""}`;
  let status;
  if (THROTTLED.includes(code)) status = 429;
  else if (TRANSIENT.includes(code) || error.is_transient === true) status = 500;
  else if (PERMANENT.includes(code)) status = code === 200 ? 403 : 400;
  else status = 500;
  return requests.map(() => ({ status, error: text }));
}
