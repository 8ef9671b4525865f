// Braze through its REST API (https://www.braze.com/docs/api/basics/), as RudderStack's
// BRAZE destination maps events.
// Endpoints (origin from `dataCenter`: "US-03" → https://rest.iad-03.braze.com, "EU-01" →
// https://rest.fra-01.braze.eu, "AU-01" → https://rest.au-01.braze.com):
//   POST /users/track                  attributes / events / purchases
//   POST /users/identify               alias (anonymousId) → external_id (userId) merge
//   POST /v2/subscription/status/set   subscription groups (group with
//                                      enableSubscriptionGroupInGroupCall)
//   POST /users/merge                  alias calls
// Auth: `Authorization: Bearer <restApiKey>`.
// Config (RudderStack's keys): restApiKey, dataCenter, enableNestedArrayOperations,
// enableSubscriptionGroupInGroupCall, sendPurchaseEventWithExtraProperties,
// useEcommerceRecommendedEvents. Keel extension: apiBaseUrl replaces the origin.
// Mapping:
//   identify → /users/track attributes (traits: email lower-cased, gender M/F/O, first_name,
//     last_name, dob, home_city, country, image_url, phone, the other traits as custom
//     attributes; nested array $add/$update/$remove with enableNestedArrayOperations), keyed
//     by external_id (userId or the `brazeExternalId` external id) else user_alias
//     {alias_name: anonymousId, alias_label: "rudder_id"} (or integrations.Braze.alias).
//     When the event has both an anonymousId (or an integrations alias) and a userId, a
//     /users/identify request comes first, so the anonymous profile merges into the user.
//   track → /users/track events [{name, time, properties}] (+ attributes from traits);
//     "Order Completed" → purchases, one per product; with useEcommerceRecommendedEvents
//     Product Viewed / Added / Removed, Checkout Started, Order Completed / Refunded /
//     Cancelled → Braze's recommended ecommerce.* events.
//   page / screen → a track of name (else properties.name, else "Page Viewed" / "Screen Viewed").
//   group → attribute ab_rudder_group_<groupId>: true, or a subscription group status.
//   alias → /users/merge (previousId merged into userId).
// Batching: batch() merges /users/track bodies (at most 75 attributes, 75 events and 75
// purchases per request, items ordered by external_id like RudderStack), /users/identify
// (50 aliases), subscription groups (25, same group+state combined) and merges (50).
// batchResponse(): a 2xx whose `message` is not "success" is a fatal error (dead-letter);
// Braze's per-item `errors[]` with message "success" are delivered (RudderStack: 296
// "delivered with warning").
// Departures from RudderStack: RudderStack calls /users/identify itself during the
// transformation; Keel returns that call as the first of the event's requests. The
// supportDedup option (which needs a user lookup, /users/export/ids) is not implemented:
// attributes are always sent in full. A missing restApiKey is refused (400).
import { DestinationError, UnsupportedEventError, baseUrl, get, isSet, notEmpty, first } from "keel";

export const maxBatchSize = 75;
export const maxBatchBytes = 4 * 1024 * 1024;

const TRACK_MAX = 75;
const IDENTIFY_MAX = 50;
const SUBSCRIPTION_MAX = 25;
const MERGE_MAX = 50;
const PARTNER = "RudderStack";

// ---------- small helpers ----------

function pickBy(obj, pred) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (pred(v)) out[k] = v;
  return out;
}

function omit(obj, keys) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (!keys.includes(k)) out[k] = v;
  return out;
}

function integrationsObj(event) {
  const i = event.integrations ?? {};
  return i.BRAZE || i.Braze || i.braze || null;
}

function externalIdOf(event, type) {
  const list = event.context?.externalId;
  if (!Array.isArray(list)) return null;
  const found = list.find((e) => e?.type === type);
  return found ? found.id : null;
}

function origin(config) {
  const dc = config.dataCenter;
  if (!dc || typeof dc !== "string") {
    throw new DestinationError("Invalid Data Center: valid values are EU, US, AU", 400);
  }
  const [region, number] = dc.trim().toLowerCase().split("-");
  let o;
  if (region === "eu") o = `https://rest.fra-${number}.braze.eu`;
  else if (region === "us") o = `https://rest.iad-${number}.braze.com`;
  else if (region === "au") o = `https://rest.au-${number}.braze.com`;
  else throw new DestinationError(`Invalid Data Center: ${dc}, valid values are EU, US, AU`, 400);
  return baseUrl(config.apiBaseUrl, o);
}

function headers(config) {
  return {
    "Content-Type": "application/json",
    Accept: "application/json",
    Authorization: `Bearer ${config.restApiKey}`,
  };
}

function request(config, path, body) {
  return { method: "POST", endpoint: `${origin(config)}${path}`, headers: headers(config), params: {}, body: { JSON: body } };
}

// ---------- identifiers ----------

function setExternalId(payload, event) {
  const id = externalIdOf(event, "brazeExternalId") || event.userId;
  if (id) payload.external_id = id;
  return payload;
}

function setAlias(payload, event) {
  const alias = integrationsObj(event)?.alias;
  if (isSet(alias?.alias_name) && isSet(alias?.alias_label)) {
    payload.user_alias = { alias_name: alias.alias_name, alias_label: alias.alias_label };
  } else if (event.anonymousId) {
    payload.user_alias = { alias_name: event.anonymousId, alias_label: "rudder_id" };
  }
  return payload;
}

function setIdOrAlias(payload, event) {
  const userId = first(event, ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"]);
  if (userId || externalIdOf(event, "brazeExternalId")) return setExternalId(payload, event);
  payload._update_existing_only = false;
  return setAlias(payload, event);
}

function addAppId(payload, event) {
  const appId = integrationsObj(event)?.appId;
  return appId ? { ...payload, app_id: String(appId) } : payload;
}

// ---------- user attributes ----------

const ATTRIBUTE_MAP = {
  country: "address.country",
  dob: "birthday",
  email: "email",
  first_name: "firstName",
  gender: "gender",
  home_city: "address.city",
  image_url: "avatar",
  last_name: "lastName",
  phone: "phone",
};
const RESERVED_TRAITS = ["address", "birthday", "email", "firstName", "gender", "avatar", "lastName", "phone"];

function formatGender(g) {
  if (typeof g !== "string") return null;
  const s = g.toLowerCase();
  if (["woman", "female", "w", "f"].includes(s)) return "F";
  if (["man", "male", "m"].includes(s)) return "M";
  if (["other", "o"].includes(s)) return "O";
  return null;
}

function nestedOperations(traits, data, mergeObjects) {
  for (const key of Object.keys(traits)) {
    const t = traits[key];
    if (t === null || typeof t !== "object" || Array.isArray(t)) continue;
    try {
      if (t.update) {
        data[key] = {};
        const ops = [];
        for (const raw of t.update) {
          const item = { ...raw };
          const op = { $identifier_key: item.identifier, $identifier_value: item[item.identifier] };
          delete item[item.identifier];
          delete item.identifier;
          op.$new_object = { ...item };
          ops.push(op);
        }
        data._merge_objects = isSet(mergeObjects) ? mergeObjects : false;
        data[key].$update = ops;
      }
      if (t.remove) {
        data[key].$remove = t.remove.map((item) => ({
          $identifier_key: item.identifier,
          $identifier_value: item[item.identifier],
        }));
      }
      if (t.add) data[key].$add = t.add;
    } catch (_) {
      // RudderStack ignores a malformed operation and sends what it has.
    }
  }
}

function userAttributes(event, config) {
  const traits = first(event, ["traits", "context.traits"]);
  if (event.context?.mappedToDestination) return traits;
  if (!traits) return {};
  const data = {};
  for (const [destKey, path] of Object.entries(ATTRIBUTE_MAP)) {
    let value = get(traits, path);
    if (value || (value === null && RESERVED_TRAITS.includes(destKey))) {
      if (destKey === "gender") value = formatGender(value);
      if (destKey === "email") {
        if (typeof value === "string") value = value.toLowerCase();
        else if (isSet(value)) throw new DestinationError("Invalid email, email must be a valid string", 400);
      }
      data[destKey] = value;
    }
  }
  for (const [key, value] of Object.entries(traits)) {
    if (!RESERVED_TRAITS.includes(key) && value !== undefined) data[key] = value;
  }
  if (config.enableNestedArrayOperations) {
    nestedOperations(traits, data, event.properties?.mergeObjectsUpdateOperation);
  }
  return data;
}

// ---------- purchases (Order Completed) ----------

function purchases(event, config) {
  const props = event.properties;
  const timestamp = first(event, ["timestamp", "originalTimestamp"]);
  const fail = (m) => {
    throw new DestinationError(`Invalid Order Completed event: ${m}`, 400);
  };
  if (!props) fail("Properties object is missing in the message");
  if (!props.products) fail("Products array is missing in the message");
  if (!Array.isArray(props.products)) fail("Products is not an array");
  const products = props.products.filter(isSet);
  if (products.length === 0) fail("Products array is empty");
  if (!timestamp) fail("Timestamp is missing in the message");
  products.forEach((p, i) => {
    const at = `for product at index: ${i}`;
    if (!isSet(p.product_id || p.sku)) fail(`Product Id is missing ${at}`);
    if (!isSet(p.price)) fail(`Price is missing ${at}`);
    if (Number.isNaN(p.price)) fail(`Price is not a number ${at}`);
    if (!isSet(p.quantity)) fail(`Quantity is missing ${at}`);
    if (Number.isNaN(p.quantity)) fail(`Quantity is not a number ${at}`);
    if (!isSet(props.currency) && !isSet(p.currency)) {
      fail(`Message properties and product at index: ${i} is missing currency`);
    }
  });
  return props.products.filter(isSet).map((p) => {
    let obj = {
      product_id: String(p.product_id || p.sku),
      price: Number.parseFloat(String(p.price)),
      currency: String(props.currency || p.currency),
      quantity: Number.parseInt(String(p.quantity), 10),
      time: timestamp,
    };
    const extra = omit(p, ["product_id", "sku", "price", "quantity", "currency"]);
    if (Object.keys(extra).length > 0 && config.sendPurchaseEventWithExtraProperties) {
      obj = { ...obj, properties: extra };
    }
    return setIdOrAlias(obj, event);
  });
}

// ---------- recommended ecommerce events ----------

const F = (destKey, sourceKeys, type) => ({ destKey, sourceKeys, type });
const PRODUCT_MAPPING = [
  F("product_id", ["product_id", "sku"], "String"),
  F("product_name", "name", "String"),
  F("variant_id", ["variant", "sku", "product_id"], "String"),
  F("quantity", "quantity", "Integer"),
  F("price", "price", "Float"),
  F("image_url", "image_url", "String"),
  F("product_url", "url", "String"),
];
const TOTAL = ["properties.total", "properties.revenue", "properties.value"];
const DISCOUNTS = ["properties.discount", "properties.total_discounts"];
const ECOMMERCE = {
  "ecommerce.product_viewed": [
    F("product_id", ["properties.product_id", "properties.sku"], "String"),
    F("product_name", "properties.name", "String"),
    F("variant_id", ["properties.variant", "properties.sku", "properties.product_id"], "String"),
    F("price", "properties.price", "Float"),
    F("currency", "properties.currency", "String"),
    F("image_url", "properties.image_url", "String"),
    F("product_url", "properties.url", "String"),
    F("type", "properties.type", "Array"),
  ],
  "ecommerce.cart_updated": [
    F("cart_id", "properties.cart_id", "String"),
    F("total_value", TOTAL, "Float"),
    F("subtotal_value", "properties.subtotal_value", "Float"),
    F("tax", "properties.tax", "Float"),
    F("shipping", "properties.shipping", "Float"),
    F("currency", "properties.currency", "String"),
  ],
  "ecommerce.checkout_started": [
    F("checkout_id", ["properties.checkout_id", "properties.order_id"], "String"),
    F("cart_id", "properties.cart_id", "String"),
    F("total_value", TOTAL, "Float"),
    F("subtotal_value", "properties.subtotal_value", "Float"),
    F("tax", "properties.tax", "Float"),
    F("shipping", "properties.shipping", "Float"),
    F("currency", "properties.currency", "String"),
  ],
  "ecommerce.order_placed": [
    F("order_id", "properties.order_id", "String"),
    F("total_value", TOTAL, "Float"),
    F("currency", "properties.currency", "String"),
    F("cart_id", "properties.cart_id", "String"),
    F("tax", "properties.tax", "Float"),
    F("shipping", "properties.shipping", "Float"),
    F("total_discounts", DISCOUNTS, "Float"),
    F("subtotal_value", "properties.subtotal_value", "Float"),
    F("discounts", "properties.discounts", "Array"),
  ],
  "ecommerce.order_refunded": [
    F("order_id", "properties.order_id", "String"),
    F("total_value", TOTAL, "Float"),
    F("currency", "properties.currency", "String"),
    F("total_discounts", DISCOUNTS, "Float"),
    F("discounts", "properties.discounts", "Array"),
  ],
  "ecommerce.order_cancelled": [
    F("order_id", "properties.order_id", "String"),
    F("total_value", TOTAL, "Float"),
    F("currency", "properties.currency", "String"),
    F("cancel_reason", ["properties.cancel_reason", "properties.reason"], "String"),
    F("tax", "properties.tax", "Float"),
    F("shipping", "properties.shipping", "Float"),
    F("total_discounts", DISCOUNTS, "Float"),
    F("subtotal_value", "properties.subtotal_value", "Float"),
    F("discounts", "properties.discounts", "Array"),
  ],
};
const ECOMMERCE_EVENTS = {
  "product viewed": { brazeEvent: "ecommerce.product_viewed" },
  "product added": { brazeEvent: "ecommerce.cart_updated", action: "add" },
  "product removed": { brazeEvent: "ecommerce.cart_updated", action: "remove" },
  "checkout started": { brazeEvent: "ecommerce.checkout_started" },
  "order completed": { brazeEvent: "ecommerce.order_placed" },
  "order refunded": { brazeEvent: "ecommerce.order_refunded" },
  "order cancelled": { brazeEvent: "ecommerce.order_cancelled" },
};

function coerce(value, type) {
  if (!isSet(value)) return value;
  if (type === "Float" && typeof value === "string" && value.trim().length > 0) {
    const n = Number(value.trim());
    if (Number.isFinite(n)) return n;
  }
  if (type === "Integer" && typeof value === "string" && /^-?\d+$/.test(value.trim())) {
    return Number.parseInt(value, 10);
  }
  if (type === "String" && typeof value === "number" && Number.isFinite(value)) return String(value);
  return value;
}

function construct(source, mapping) {
  const out = {};
  for (const m of mapping) {
    const value = Array.isArray(m.sourceKeys) ? first(source, m.sourceKeys) : get(source, m.sourceKeys);
    if (value || value === 0 || value === false) out[m.destKey] = coerce(value, m.type);
  }
  return out;
}

function sourceKeysOf(mapping) {
  return mapping.flatMap((m) => (Array.isArray(m.sourceKeys) ? m.sourceKeys : [m.sourceKeys]));
}

function deriveSource(event) {
  const explicit = String(event.properties?.source ?? "").trim().toLowerCase();
  if (["web", "ios", "android"].includes(explicit)) return explicit;
  const channel = String(event.context?.channel || event.channel || "").toLowerCase();
  if (channel === "mobile") {
    const os = String(event.context?.os?.name || "").toLowerCase();
    if (os.includes("ios")) return "ios";
    if (os.includes("android")) return "android";
  }
  return "web";
}

function ecommerceProperties(event, brazeEvent, action) {
  const mapping = ECOMMERCE[brazeEvent];
  const withProducts = brazeEvent !== "ecommerce.product_viewed";
  const isCart = brazeEvent === "ecommerce.cart_updated";
  const props = event.properties ?? {};
  const explicitProducts = Array.isArray(props.products);
  const payload = construct(event, mapping);
  if (withProducts) {
    if (isCart && !explicitProducts) {
      const product = pickBy(construct(props, PRODUCT_MAPPING), notEmpty);
      payload.products = Object.keys(product).length > 0 ? [product] : [];
    } else {
      const consumed = new Set(sourceKeysOf(PRODUCT_MAPPING));
      payload.products = (explicitProducts ? props.products : [])
        .map((raw) => {
          const item = raw && typeof raw === "object" ? raw : {};
          const product = pickBy(construct(item, PRODUCT_MAPPING), notEmpty);
          const meta = pickBy(pickBy(item, () => true), notEmpty);
          for (const k of consumed) delete meta[k];
          if (Object.keys(meta).length > 0) product.metadata = meta;
          return product;
        })
        .filter((p) => Object.keys(p).length > 0);
    }
  }
  payload.source = deriveSource(event);
  if (action) payload.action = action;
  const consumed = new Set(["source"]);
  for (const k of sourceKeysOf(mapping)) if (k.startsWith("properties.")) consumed.add(k.slice(11));
  if (withProducts) consumed.add("products");
  if (isCart && !explicitProducts) for (const k of sourceKeysOf(PRODUCT_MAPPING)) consumed.add(k);
  if (action) consumed.add("action");
  const meta = {};
  for (const [k, v] of Object.entries(props)) if (!consumed.has(k) && notEmpty(v)) meta[k] = v;
  const metadata = omit(meta, ["time", "event_name"]);
  if (Object.keys(metadata).length > 0) payload.metadata = metadata;
  return pickBy(payload, notEmpty);
}

// ---------- per type ----------

function trackLike(event, config, type, name) {
  const body = { partner: PARTNER };
  let attributes = userAttributes(event, config);
  if (attributes && Object.keys(attributes).length > 0) {
    body.attributes = [setIdOrAlias(attributes, event)];
  }
  if (type === "track" && config.useEcommerceRecommendedEvents && typeof name === "string") {
    const ecom = ECOMMERCE_EVENTS[name.trim().toLowerCase()];
    if (ecom) {
      let ev = { name: ecom.brazeEvent, time: event.timestamp, properties: ecommerceProperties(event, ecom.brazeEvent, ecom.action) };
      ev = addAppId(setIdOrAlias(ev, event), event);
      body.events = [ev];
      return request(config, "/users/track", body);
    }
  }
  if (type === "track" && typeof name === "string" && name.toLowerCase() === "order completed") {
    body.purchases = purchases(event, config);
    return request(config, "/users/track", body);
  }
  const props = event.properties ?? {};
  if (typeof props !== "object") throw new DestinationError("Invalid event properties", 400);
  let ev = { name, time: event.timestamp, properties: omit(props, ["time", "event_name"]) };
  ev = addAppId(setIdOrAlias(ev, event), event);
  body.events = [ev];
  return request(config, "/users/track", body);
}

function identify(event, config) {
  const out = [];
  const aliasPresent = isSet(integrationsObj(event)?.alias);
  const externalId = externalIdOf(event, "brazeExternalId") || event.userId;
  if ((event.anonymousId || aliasPresent) && externalId) {
    const alias = setExternalId(setAlias({}, event), event);
    out.push(request(config, "/users/identify", { aliases_to_identify: [alias], merge_behavior: "merge" }));
  }
  const attributes = userAttributes(event, config);
  if (!attributes || Object.keys(attributes).length === 0) {
    throw new DestinationError("No attributes found to update the user profile", 400);
  }
  out.push(request(config, "/users/track", { attributes: [setIdOrAlias(attributes, event)] }));
  return out.length === 1 ? out[0] : out;
}

function group(event, config) {
  const groupId = first(event, ["groupId", "traits.groupId"]);
  if (!groupId) throw new DestinationError("Invalid groupId", 400);
  if (config.enableSubscriptionGroupInGroupCall) {
    const traits = event.traits;
    if (!(traits && (traits.phone || traits.email))) {
      throw new DestinationError("Message should have traits with subscriptionState, email or phone", 400);
    }
    if (traits.subscriptionState !== "subscribed" && traits.subscriptionState !== "unsubscribed") {
      throw new DestinationError(
        "you must provide a subscription state in traits and possible values are subscribed and unsubscribed.",
        400,
      );
    }
    const sub = { subscription_group_id: groupId, subscription_state: traits.subscriptionState };
    if (event.userId) sub.external_ids = [event.userId];
    const phone = first(event, ["traits.phone", "context.traits.phone", "properties.phone"]);
    const email = first(event, ["traits.email", "context.traits.email", "properties.email", "context.externalId.0.id"]);
    if (phone) sub.phones = [phone];
    else if (email) sub.emails = [email];
    return request(config, "/v2/subscription/status/set", { subscription_groups: [sub] });
  }
  const attribute = { [`ab_rudder_group_${groupId}`]: true };
  setExternalId(attribute, event);
  return request(config, "/users/track", { attributes: [attribute], partner: PARTNER });
}

function alias(event, config) {
  if (!event.userId) throw new DestinationError("[BRAZE]: userId is required for alias call", 400);
  if (!event.previousId) throw new DestinationError("[BRAZE]: previousId is required for alias call", 400);
  return request(config, "/users/merge", {
    merge_updates: [
      { identifier_to_merge: { external_id: event.previousId }, identifier_to_keep: { external_id: event.userId } },
    ],
  });
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  const type = String(event.type ?? "").toLowerCase();
  const known = ["track", "page", "screen", "identify", "group", "alias"];
  if (!known.includes(type)) throw new UnsupportedEventError("Message type is not supported");
  if (!config.restApiKey) throw new DestinationError("restApiKey is required", 400);
  origin(config); // validates dataCenter first, as RudderStack does
  switch (type) {
    case "track":
      return trackLike(event, config, type, event.event);
    case "page":
      return trackLike(event, config, type, event.name || get(event, "properties.name") || "Page Viewed");
    case "screen":
      return trackLike(event, config, type, event.name || get(event, "properties.name") || "Screen Viewed");
    case "identify":
      return identify(event, config);
    case "group":
      return group(event, config);
    default:
      return alias(event, config);
  }
}

// ---------- batching ----------

function kindOf(req) {
  const e = String(req.endpoint ?? "");
  if (e.endsWith("/users/track")) return "track";
  if (e.endsWith("/users/identify")) return "identify";
  if (e.endsWith("/v2/subscription/status/set")) return "subscription";
  if (e.endsWith("/users/merge")) return "merge";
  return "other";
}

function byExternalId(items) {
  // lodash sortBy semantics: stable, undefined ids last.
  return items
    .map((item, i) => ({ item, i }))
    .sort((a, b) => {
      const x = a.item?.external_id;
      const y = b.item?.external_id;
      if (x === undefined && y === undefined) return a.i - b.i;
      if (x === undefined) return 1;
      if (y === undefined) return -1;
      if (x < y) return -1;
      if (x > y) return 1;
      return a.i - b.i;
    })
    .map((e) => e.item);
}

function combineSubscriptions(groups) {
  const unique = new Map();
  for (const g of groups) {
    const key = `${g.subscription_group_id}-${g.subscription_state}`;
    if (!unique.has(key)) {
      unique.set(key, { ...g, external_ids: [...(g.external_ids || [])], emails: [...(g.emails || [])], phones: [...(g.phones || [])] });
    } else {
      const u = unique.get(key);
      u.external_ids.push(...(g.external_ids || []));
      u.emails.push(...(g.emails || []));
      u.phones.push(...(g.phones || []));
    }
  }
  return [...unique.values()].map((g) => {
    const r = { subscription_group_id: g.subscription_group_id, subscription_state: g.subscription_state };
    if (g.emails.length) r.emails = [...new Set(g.emails)];
    if (g.phones.length) r.phones = [...new Set(g.phones)];
    if (g.external_ids.length) r.external_ids = [...new Set(g.external_ids)];
    return r;
  });
}

// Groups the indices `list` into chunks whose summed `sizes` stay within `max` per key.
function chunkBy(list, sizesOf, max) {
  const chunks = [];
  let current = [];
  let totals = {};
  for (const i of list) {
    const sizes = sizesOf(i);
    const fits = Object.entries(sizes).every(([k, n]) => (totals[k] ?? 0) + n <= max);
    if (!fits && current.length > 0) {
      chunks.push(current);
      current = [];
      totals = {};
    }
    current.push(i);
    for (const [k, n] of Object.entries(sizes)) totals[k] = (totals[k] ?? 0) + n;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

export function batch(requests) {
  const groups = { identify: [], track: [], subscription: [], merge: [], other: [] };
  requests.forEach((r, i) => groups[kindOf(r)].push(i));
  const body = (i) => requests[i].body?.JSON ?? {};
  const len = (a) => (Array.isArray(a) ? a.length : 0);
  const out = [];
  const make = (i, json) => ({ method: "POST", endpoint: requests[i].endpoint, headers: requests[i].headers, params: {}, body: { JSON: json } });

  for (const chunk of chunkBy(groups.identify, (i) => ({ a: len(body(i).aliases_to_identify) }), IDENTIFY_MAX)) {
    const aliases = chunk.flatMap((i) => body(i).aliases_to_identify ?? []);
    out.push({ request: make(chunk[0], { aliases_to_identify: aliases, merge_behavior: "merge" }), events: chunk });
  }
  const trackSizes = (i) => ({ attributes: len(body(i).attributes), events: len(body(i).events), purchases: len(body(i).purchases) });
  for (const chunk of chunkBy(groups.track, trackSizes, TRACK_MAX)) {
    const json = { partner: PARTNER };
    for (const key of ["attributes", "events", "purchases"]) {
      const items = chunk.flatMap((i) => body(i)[key] ?? []);
      if (items.length > 0) json[key] = byExternalId(items);
    }
    out.push({ request: make(chunk[0], json), events: chunk });
  }
  for (const chunk of chunkBy(groups.subscription, (i) => ({ s: len(body(i).subscription_groups) }), SUBSCRIPTION_MAX)) {
    const subs = chunk.flatMap((i) => body(i).subscription_groups ?? []);
    out.push({ request: make(chunk[0], { subscription_groups: combineSubscriptions(subs) }), events: chunk });
  }
  for (const chunk of chunkBy(groups.merge, (i) => ({ m: len(body(i).merge_updates) }), MERGE_MAX)) {
    const merges = chunk.flatMap((i) => body(i).merge_updates ?? []);
    out.push({ request: make(chunk[0], { merge_updates: merges }), events: chunk });
  }
  for (const i of groups.other) out.push({ request: requests[i], events: [i] });
  return out;
}

export function batchResponse(response, requests) {
  const ok = response.status >= 200 && response.status < 300;
  if (!ok) return requests.map(() => null);
  const body = response.body;
  if (!body || typeof body !== "object" || body.message !== "success") {
    const error = `Request failed for braze with status: ${response.status}: ${typeof body === "string" ? body : JSON.stringify(body)}`;
    return requests.map(() => ({ status: 400, error }));
  }
  return requests.map(() => null);
}
