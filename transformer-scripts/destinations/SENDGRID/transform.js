// Twilio SendGrid v3 API (https://www.twilio.com/docs/sendgrid/api-reference), as RudderStack's
// SENDGRID destination uses it.
// Endpoints (https://api.sendgrid.com; Keel's region "EU" → https://api.eu.sendgrid.com):
//   POST /v3/mail/send                  track: one email per configured event
//   PUT  /v3/marketing/contacts         identify: upsert a Marketing Campaigns contact
//                                       {list_ids, contacts: [...]} (≤ 30,000 contacts, 6 MB)
//   GET  /v3/marketing/field_definitions  lookup of custom field ids (see customFieldsMapping)
// Auth: `Authorization: Bearer <apiKey>`.
// Config (RudderStack's keys): apiKey (required); track: eventNamesSettings ([{event}]: only
// these events send mail), mailFromTraits, fromEmail, fromName, replyToEmail, replyToName,
// subject, templateId, contents ([{type, value}]), attachments ([{content, filename, type,
// disposition, contentId}]), group, groupsToDisplay ([{groupId}]), IPPoolName, footer,
// footerText, footerHtml, sandboxMode, clickTracking, clickTrackingEnableText, openTracking,
// openTrackingSubstitutionTag, subscriptionTracking, text, html, substitutionTag, ganalytics,
// utmSource, utmMedium, utmTerm, utmContent, utmCampaign; identify: listId,
// customFieldsMapping ([{from: trait, to: SendGrid custom field name}]).
// Keel extensions: apiBaseUrl replaces the origin; region ("US" default | "EU");
// customFieldDefinitions ([{id, name}], SendGrid's field_definitions `custom_fields`) when set
// replaces the lookup (tests, or to spare the call).
// Mapping:
//   track → mail/send: the event must be one of eventNamesSettings (case-insensitive);
//     properties from, attachments, categories, sendAt, batchId, replyToList, content,
//     templateId, headers, customArgs, personalizations, subject, replyTo map to SendGrid's
//     fields; personalizations from the traits' email with mailFromTraits; missing values
//     come from the config (from, template, attachments, contents, subject, reply-to);
//     asm (group, groupsToDisplay), ip_pool_name, mail_settings (config, overridden by
//     properties.mailSettings), tracking_settings (config); other properties → custom_args;
//     recipients without an email are dropped, categories stringified and cut to 10.
//   identify → PUT marketing/contacts: email (traits/context.traits/properties; required),
//     phone_number, first_name, last_name, city (address.city), state_province_region
//     (region), country, postal_code, address_line_1 (address, flattened), whatsapp
//     (whatsappNumber), facebook (facebookUrl), unique_name (name), custom_fields (by
//     customFieldsMapping: field name → SendGrid field id from the lookup); list_ids: config
//     listId plus the `listIds` external id (string or array), sorted.
//   page, screen, group, alias → skipped (not supported).
// Batching: batch() merges contact upserts with the same list_ids into one request (≤ 30,000
// contacts); mail sends go one per request. batchResponse(): SendGrid refuses a whole upsert
// with 400 {errors: [{field: "contacts[i]…", message}]}: the named contacts' events are
// dead-lettered and the others retried (they were refused only because of them).
// Departures from RudderStack: RudderStack's processor answers an identify with a
// placeholder body {contactDetails, contactListIds} that only its router turns into the
// request; Keel's process() answers the real upsert {list_ids, contacts: [contact]} (one
// contact) and batch() merges them.
import { DestinationError, UnsupportedEventError, baseUrl, isSet } from "keel";

export const maxBatchSize = 1000;
export const maxBatchBytes = 6 * 1000 * 1000;

const ORIGINS = { US: "https://api.sendgrid.com", EU: "https://api.eu.sendgrid.com" };
const CONTACTS_MAX = 30000;
const MIN_POOL_LENGTH = 2;
const MAX_POOL_LENGTH = 64;
const CACHE_MS = 10 * 60 * 1000;
const TRACK_EXCLUSION_FIELDS = [
  "personalizations", "from", "replyTo", "replyToList", "subject", "content", "attachments",
  "templateId", "headers", "categories", "sendAt", "batchId", "asm", "IPPoolName", "mailSettings",
  "trackingSettings",
];

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
  return undefined;
}

function dropNulls(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj ?? {})) if (isSet(v)) out[k] = v;
  return out;
}

// lodash.isEmpty: nothing, an empty string/array/object — and any number or boolean.
function lodashEmpty(v) {
  if (v === null || v === undefined) return true;
  if (typeof v === "string" || Array.isArray(v)) return v.length === 0;
  if (typeof v === "object") return Object.keys(v).length === 0;
  return true;
}

// RudderStack's isEmpty: String(value) trimmed is empty (arrays join, objects are not empty).
function blank(v) {
  if (v === null || v === undefined) return true;
  if (Array.isArray(v)) return v.map((x) => (x === null || x === undefined ? "" : String(x))).join(",").trim() === "";
  return String(v).trim() === "";
}

const isEmptyObject = (o) => !o || Object.keys(o).length === 0;
const isObject = (v) => v !== null && (typeof v === "object" || typeof v === "function") && !Array.isArray(v);
const isWholeNumber = (v) => !Number.isNaN(Number(v)) && Number.isInteger(Number(v));

function origin(config) {
  const region = String(config.region ?? "US").toUpperCase();
  const o = ORIGINS[region];
  if (!o) throw new DestinationError(`region ${JSON.stringify(config.region)} is not one of US, EU`, 400);
  return baseUrl(config.apiBaseUrl, o);
}

function headers(config) {
  return { "Content-Type": "application/json", Authorization: `Bearer ${config.apiKey}` };
}

// ---------- track: mail/send ----------

const TRACK_MAPPING = [
  ["from", "properties.from"], ["attachments", "properties.attachments"], ["categories", "properties.categories"],
  ["send_at", "properties.sendAt"], ["batch_id", "properties.batchId"], ["reply_to_list", "properties.replyToList"],
  ["content", "properties.content"], ["template_id", "properties.templateId"], ["headers", "properties.headers"],
  ["custom_args", "properties.customArgs"], ["personalizations", "properties.personalizations"],
  ["subject", "properties.subject"], ["reply_to", "properties.replyTo"],
];

function validateTrack(event, config) {
  let name = event.event;
  if (!name) throw new DestinationError("Event is required for track call", 400);
  name = String(name).trim().toLowerCase();
  const settings = Array.isArray(config.eventNamesSettings) ? config.eventNamesSettings : [];
  const ok = settings.some((s) => s?.event && String(s.event).trim().length > 0 && String(s.event).trim().toLowerCase() === name);
  if (!ok) throw new DestinationError("Event not configured on dashboard", 400);
}

function configAttachments(config) {
  const out = [];
  for (const a of Array.isArray(config.attachments) ? config.attachments : []) {
    if (a?.content && a?.filename) {
      const clean = {};
      for (const [k, v] of Object.entries(a)) if (!lodashEmpty(v)) clean[k] = v;
      out.push(clean);
    }
  }
  return out;
}

function configContents(config) {
  return (Array.isArray(config.contents) ? config.contents : []).filter((c) => c?.type && c?.value);
}

function fromConfig(payload, config) {
  const p = payload;
  if (!p.from) p.from = dropNulls({ email: config.fromEmail, name: config.fromName ? config.fromName : null });
  if (config.templateId && !p.template_id) p.template_id = config.templateId;
  if (!p.attachments || blank(p.attachments)) {
    const a = configAttachments(config);
    if (a.length > 0) p.attachments = a;
    else delete p.attachments;
  }
  if (!p.content || blank(p.content)) {
    const c = configContents(config);
    if (c.length > 0) p.content = c;
    else delete p.content;
  }
  if (!p.subject || blank(p.subject)) p.subject = config.subject;
  if (!p.reply_to) {
    p.reply_to = { email: config.replyToEmail ? config.replyToEmail : null, name: config.replyToName ? config.replyToName : null };
  }
  return p;
}

function requireFields(p) {
  if (!p.template_id && (!p.content || blank(p.content))) throw new DestinationError("Either template id or content is required", 400);
  if (!p.personalizations || blank(p.personalizations)) throw new DestinationError("Personalizations field cannot be missing or empty", 400);
  if (!p.from) throw new DestinationError("From is required field", 400);
  if (!p.from.email) throw new DestinationError("Email inside from object is required", 400);
}

function mailSettings(p, event, config) {
  const ms = {
    bypass_list_management: {},
    bypass_spam_management: {},
    bypass_bounce_management: {},
    bypass_unsubscribe_management: {},
    footer: { enable: config.footer, text: config.footerText, html: config.footerHtml },
    sandbox_mode: { enable: config.sandboxMode },
  };
  const mail = event.properties?.mailSettings;
  if (mail) {
    if (mail.bypassListManagement) {
      ms.bypass_list_management.enable = mail.bypassListManagement;
    } else {
      if (mail.bypassSpamManagement) ms.bypass_spam_management.enable = mail.bypassSpamManagement;
      if (mail.bypassBounceManagement) ms.bypass_bounce_management.enable = mail.bypassBounceManagement;
      if (mail.bypassUnsubscribeManagement) ms.bypass_unsubscribe_management.enable = mail.bypassUnsubscribeManagement;
    }
    if (mail.footer) ms.footer.enable = mail.footer;
    if (mail.footerText) ms.footer.text = mail.footerText;
    if (mail.footerHtml) ms.footer.html = mail.footerHtml;
    if (mail.sandboxMode) ms.sandbox_mode.enable = mail.sandboxMode;
  }
  for (const key of ["bypass_list_management", "bypass_spam_management", "bypass_bounce_management", "bypass_unsubscribe_management"]) {
    if (isEmptyObject(ms[key])) delete ms[key];
  }
  if (blank(ms.footer.text)) ms.footer.text = null;
  if (blank(ms.footer.html)) ms.footer.html = null;
  ms.footer = dropNulls(ms.footer);
  if (!ms.footer.enable) delete ms.footer;
  if (!ms.sandbox_mode.enable) delete ms.sandbox_mode;
  const clean = dropNulls(ms);
  if (isEmptyObject(clean)) delete p.mail_settings;
  else p.mail_settings = clean;
  return p;
}

function trackingSettings(p, config) {
  const ts = {
    click_tracking: { enable: config.clickTracking, enable_text: config.clickTrackingEnableText },
    open_tracking: dropNulls({ enable: config.openTracking, substitution_tag: config.openTrackingSubstitutionTag || null }),
    subscription_tracking: dropNulls({
      enable: config.subscriptionTracking || false,
      text: config.text || null,
      html: config.html || null,
      substitution_tag: config.substitutionTag || null,
    }),
    ganalytics: dropNulls({
      enable: config.ganalytics,
      utm_source: config.utmSource || null,
      utm_medium: config.utmMedium || null,
      utm_term: config.utmTerm || null,
      utm_content: config.utmContent || null,
      utm_campaign: config.utmCampaign || null,
    }),
  };
  if (!ts.subscription_tracking.enable) delete ts.subscription_tracking;
  if (!ts.open_tracking.enable) delete ts.open_tracking;
  if (!ts.ganalytics.enable) delete ts.ganalytics;
  if (!ts.click_tracking.enable && !ts.click_tracking.enable_text) delete ts.click_tracking;
  else ts.click_tracking = Object.fromEntries(Object.entries(ts.click_tracking).filter(([, v]) => v !== undefined));
  if (isEmptyObject(ts)) delete p.tracking_settings;
  else p.tracking_settings = ts;
  return p;
}

function validatePayload(p) {
  if (p.personalizations) {
    p.personalizations.forEach((item, i) => {
      const to = [];
      if (item?.to && (p.subject || item.subject)) {
        for (const t of item.to) if (t?.email) to.push(t);
      }
      p.personalizations[i].to = to;
    });
  }
  if (Array.isArray(p.attachments)) {
    p.attachments.forEach((a, i) => {
      if (!a?.content || !a?.filename) p.attachments[i] = null;
    });
  }
  if (Array.isArray(p.categories)) {
    p.categories = p.categories.map((c) => (typeof c !== "string" ? JSON.stringify(c) : c)).slice(0, 10);
  }
  if (p.headers && !isObject(p.headers)) p.headers = null;
  if (p.subject && p.subject.length === 0) delete p.subject;
  if (isEmptyObject(p.reply_to)) delete p.reply_to;
  if (p.reply_to && !p.reply_to.email) delete p.reply_to;
  if (p.asm && p.asm.groups_to_display && !p.asm.group_id) delete p.asm;
  if (isEmptyObject(p.asm)) delete p.asm;
  return p;
}

function track(event, config) {
  validateTrack(event, config);
  let p = {};
  for (const [dest, source] of TRACK_MAPPING) {
    const v = get(event, source);
    if (present(v)) p[dest] = JSON.parse(JSON.stringify(v));
  }
  if (!p.personalizations && config.mailFromTraits) {
    const email = first(event, ["traits.email", "context.traits.email"]);
    if (!email) throw new DestinationError("Either email not found in traits or personalizations field is missing/empty", 400);
    p.personalizations = [{ to: [{ email }] }];
  }
  p = fromConfig(p, config);
  requireFields(p);
  p.asm = {};
  if (config.group && isWholeNumber(config.group)) p.asm.group_id = Number(config.group);
  const display = [];
  for (const g of Array.isArray(config.groupsToDisplay) ? config.groupsToDisplay : []) {
    if (g?.groupId && String(g.groupId).trim() && isWholeNumber(g.groupId)) display.push(Number(g.groupId));
  }
  p.asm.groups_to_display = display.length > 0 ? display : null;
  if (config.IPPoolName && config.IPPoolName.length >= MIN_POOL_LENGTH && config.IPPoolName.length <= MAX_POOL_LENGTH) {
    p.ip_pool_name = config.IPPoolName;
  }
  p.reply_to = dropNulls(p.reply_to);
  p.asm = dropNulls(p.asm);
  p = mailSettings(p, event, config);
  p = trackingSettings(p, config);
  if (!p.custom_args && event.properties && typeof event.properties === "object") {
    const custom = {};
    for (const [k, v] of Object.entries(event.properties)) {
      if (TRACK_EXCLUSION_FIELDS.includes(k) || ["__proto__", "constructor", "prototype"].includes(k)) continue;
      if (v !== undefined) custom[k] = v;
    }
    if (!isEmptyObject(custom)) p.custom_args = custom;
  }
  p = validatePayload(p);
  return {
    method: "POST",
    endpoint: `${origin(config)}/v3/mail/send`,
    headers: headers(config),
    params: {},
    body: { JSON: dropNulls(p) },
  };
}

// ---------- identify: marketing/contacts ----------

const ZIP = [
  "zip", "zipcode", "zip_code", "zipCode", "postalcode", "postal_code", "postalCode",
];
const ZIP_PATHS = [
  ...ZIP.map((k) => `traits.${k}`),
  ...["zipcode", "zip_code", "zip", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `traits.address.${k}`),
  ...ZIP.map((k) => `context.traits.${k}`),
  ...["zip", "zipcode", "zip_code", "zipCode", "postalcode", "postal_code", "postalCode"].map((k) => `context.traits.address.${k}`),
];
const IDENTIFY_MAPPING = [
  ["email", ["traits.email", "context.traits.email", "properties.email"], "emailOnly"],
  ["phone_number", ["traits.phone", "context.traits.phone", "properties.phone"]],
  ["first_name", [
    "traits.firstName", "traits.firstname", "traits.first_name",
    "context.traits.firstName", "context.traits.firstname", "context.traits.first_name",
  ]],
  ["last_name", [
    "traits.lastName", "traits.lastname", "traits.last_name",
    "context.traits.lastName", "context.traits.lastname", "context.traits.last_name",
  ]],
  ["city", ["traits.address.city", "context.traits.address.city"]],
  ["state_province_region", ["traits.region", "context.traits.region"]],
  ["country", ["traits.country", "context.traits.country"]],
  ["postal_code", ZIP_PATHS],
  ["address_line_1", ["traits.address", "context.traits.address"]],
  ["whatsapp", ["traits.whatsappNumber", "context.traits.whatsappNumber"]],
  ["facebook", ["traits.facebookUrl", "context.traits.facebookUrl"]],
  ["unique_name", ["traits.name", "context.traits.name"]],
];

function flattenAddress(address) {
  if (address && typeof address === "object") {
    return Object.keys(address).map((k) => `${address[k]} `).join("").trim();
  }
  return String(address).trim();
}

function listIdsOf(event, config) {
  const ids = [];
  if (config.listId) ids.push(config.listId);
  const ext = Array.isArray(event.context?.externalId) ? event.context.externalId.find((e) => e?.type === "listIds") : null;
  const listIds = ext ? ext.id : null;
  if (listIds && typeof listIds === "string") ids.push(listIds);
  if (listIds && Array.isArray(listIds)) ids.push(...listIds);
  const joined = ids.sort().toString();
  return joined ? joined.split(",") : [];
}

const fieldCache = new Map(); // destination id → {at, list}

async function customFieldDefinitions(destination) {
  const config = destination.Config ?? {};
  if (Array.isArray(config.customFieldDefinitions)) return config.customFieldDefinitions;
  const key = String(destination.ID ?? "");
  const cached = fieldCache.get(key);
  if (cached && Date.now() - cached.at < CACHE_MS) return cached.list;
  let res;
  try {
    res = await fetchV2(`${origin(config)}/v3/marketing/field_definitions`, { method: "GET", headers: headers(config) });
  } catch (e) {
    throw new DestinationError(`Failed to get SendGrid custom field definitions: ${e.message}`, 500);
  }
  if (res.status < 200 || res.status >= 300) {
    const message = res.body?.errors?.[0]?.message ?? JSON.stringify(res.body);
    throw new DestinationError(message, res.status === 429 || res.status >= 500 ? 500 : 400);
  }
  const list = Array.isArray(res.body?.custom_fields) ? res.body.custom_fields : [];
  fieldCache.set(key, { at: Date.now(), list });
  return list;
}

async function customFields(event, destination) {
  const config = destination.Config ?? {};
  const out = {};
  const traits = get(event, "context.traits") || get(event, "traits");
  const mapping = {};
  for (const m of Array.isArray(config.customFieldsMapping) ? config.customFieldsMapping : []) {
    if (!m || blank(m.from)) continue;
    mapping[m.from] = m.to;
  }
  const fields = Object.keys(mapping);
  if (fields.length === 0) return out;
  const definitions = await customFieldDefinitions(destination);
  const idByName = {};
  for (const d of definitions) if (d && d.name !== undefined) idByName[d.name] = d.id;
  if (!isEmptyObject(traits)) {
    for (const field of fields) {
      if (traits[field] && Object.prototype.hasOwnProperty.call(idByName, mapping[field])) {
        out[idByName[mapping[field]]] = traits[field];
      }
    }
  }
  return out;
}

async function identify(event, destination) {
  const config = destination.Config ?? {};
  if (!first(event, ["traits.email", "context.traits.email", "properties.email", "context.externalId.0.id"])) {
    throw new DestinationError("Parameter mail is required", 400);
  }
  const contact = {};
  for (const [dest, paths, generic] of IDENTIFY_MAPPING) {
    const v = first(event, paths);
    if (present(v)) contact[dest] = v;
    else if (generic) throw new DestinationError(`Missing required value from ${JSON.stringify(generic)}`, 400);
  }
  if (contact.address_line_1) contact.address_line_1 = flattenAddress(contact.address_line_1);
  contact.custom_fields = await customFields(event, destination);
  const listIds = listIdsOf(event, config);
  const body = listIds.length > 0 ? { list_ids: listIds, contacts: [contact] } : { contacts: [contact] };
  return {
    method: "PUT",
    endpoint: `${origin(config)}/v3/marketing/contacts`,
    headers: headers(config),
    params: {},
    body: { JSON: body },
  };
}

// ---------- entry points ----------

export async function process(event, destination) {
  const config = destination.Config ?? {};
  if (!event.type) throw new DestinationError("Event type is required", 400);
  if (!config.apiKey) throw new DestinationError("Invalid Api Key (apiKey is required)", 400);
  const type = String(event.type).toLowerCase();
  if (type === "identify") return identify(event, destination);
  if (type === "track") return track(event, config);
  throw new UnsupportedEventError(`Event type ${type} is not supported`);
}

const isUpsert = (r) => r.method === "PUT" && /\/v3\/marketing\/contacts$/.test(String(r.endpoint)) && Array.isArray(r.body?.JSON?.contacts);

// Contact upserts with the same list_ids merge into one request.
export function batch(requests) {
  const out = [];
  const groups = new Map();
  requests.forEach((r, i) => {
    if (!isUpsert(r)) {
      out.push({ request: r, events: [i] });
      return;
    }
    const lists = r.body.JSON.list_ids ?? [];
    const key = JSON.stringify([r.endpoint, r.headers?.Authorization ?? "", lists]);
    if (!groups.has(key)) groups.set(key, { r, lists, chunks: [[]] });
    const g = groups.get(key);
    let chunk = g.chunks[g.chunks.length - 1];
    if (chunk.length >= CONTACTS_MAX) {
      chunk = [];
      g.chunks.push(chunk);
    }
    chunk.push(i);
  });
  for (const g of groups.values()) {
    for (const chunk of g.chunks) {
      const contacts = chunk.flatMap((i) => requests[i].body.JSON.contacts);
      const body = g.lists.length > 0 ? { list_ids: g.lists, contacts } : { contacts };
      out.push({ request: { ...g.r, body: { JSON: body } }, events: chunk });
    }
  }
  return out;
}

// A refused upsert names the bad contacts in errors[].field ("contacts[2].email").
export function batchResponse(response, requests) {
  if (response.status !== 400 || requests.length < 2 || !requests.every(isUpsert)) return requests.map(() => null);
  const errors = Array.isArray(response.body?.errors) ? response.body.errors : [];
  const bad = new Map(); // contact index → messages
  for (const e of errors) {
    const m = /^contacts\[(\d+)\]/.exec(String(e?.field ?? ""));
    if (!m) continue;
    const i = Number(m[1]);
    bad.set(i, [...(bad.get(i) ?? []), `${e.field}: ${e.message ?? "invalid"}`]);
  }
  if (bad.size === 0) return requests.map(() => null);
  let index = 0;
  return requests.map((r) => {
    const n = r.body.JSON.contacts.length;
    const messages = [];
    for (let k = index; k < index + n; k += 1) if (bad.has(k)) messages.push(...bad.get(k));
    index += n;
    if (messages.length > 0) return { status: 400, error: `SendGrid refused the contact: ${messages.join("; ")}` };
    return { status: 500, error: "SendGrid refused the batch because of other contacts in it; retrying" };
  });
}
