// Discord through a channel's incoming webhook (https://discord.com/developers/docs/resources/webhook#execute-webhook):
//   POST <webhookUrl>  {"content": "<text>", "embeds": [{"title", "description"}]}
// Auth: the webhook URL carries its own token (https://discord.com/api/webhooks/{id}/{token}).
// Config (RudderStack's keys): webhookUrl (required); identifyTemplate;
// eventTemplateSettings ([{eventName, eventTemplate, eventRegex}]: the first setting whose
// name equals the event, or whose regex matches it, gives the track template);
// whitelistedTraitsSettings ([{trait}]: the traits shown by {{traits}} and the default
// identify text); embedFlag (add an embed), embedTitleTemplate, embedDescriptionTemplate.
// Keel extension: apiBaseUrl replaces the webhook URL's origin (its path is kept).
// Templates are Handlebars-style: {{name}}, {{event}}, {{traits}} (the "key: value " list),
// {{traitsList.x}}, {{properties.x}}, {{propertiesList}}, any trait (identify) or property
// (track) by its own name, {{"a key"}} for a name with spaces; {{{x}}} is the same.
// Mapping:
//   identify → default "Identified <name> with <key>: <value> …" over the whitelisted traits
//     (all traits when none is whitelisted); embed description "Identify call made".
//   track → default "<name> did <event> with <key>: <value> …" over the properties; embed
//     description "Track call made". The embed title defaults to "Message from Rudderstack ".
//   <name>: traits.name, else firstName+lastName, username, properties.email, traits.email,
//     "User <userId>", "Anonymous user <anonymousId>".
//   page, screen, group, alias → skipped (RudderStack's Discord posts identify and track only).
// No batching (one message per webhook call).
// Departures from RudderStack: values are not HTML-escaped (RudderStack's Handlebars turns
// & < > " ' ` = into entities, which Discord shows literally); objects and arrays in templates
// render as JSON rather than "[object Object]"; the content is cut at Discord's 2000
// characters and embed titles / descriptions at 256 / 4096 (Discord refuses longer ones).
import { DestinationError, UnsupportedEventError, baseUrl } from "keel";

const CONTENT_MAX = 2000;
const TITLE_MAX = 256;
const DESCRIPTION_MAX = 4096;

function get(obj, path) {
  if (obj === null || obj === undefined) return undefined;
  if (Object.prototype.hasOwnProperty.call(obj, path)) return obj[path];
  let v = obj;
  for (const key of path.replace(/^this\./, "").replace(/^\.\//, "").split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key.replace(/^\[(.*)\]$/, "$1")];
  }
  return v;
}

function show(v) {
  if (v === undefined || v === null) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// Renders {{path}}, {{{path}}} and {{"literal key"}} against `scope`.
function render(template, scope) {
  return template.replace(/\{\{\{?\s*(?:"([^"]*)"|'([^']*)'|([^{}\s]+))\s*\}?\}\}/g, (_, dq, sq, path) => {
    if (dq !== undefined || sq !== undefined) return show(scope[dq ?? sq]);
    return show(get(scope, path));
  });
}

function cut(s, max) {
  return s.length > max ? s.slice(0, max) : s;
}

const nonBlank = (s) => typeof s === "string" && s.trim().length > 0;

function traitsOf(event) {
  return event.traits || event.context?.traits || undefined;
}

function userName(event) {
  const t = traitsOf(event);
  const full = t?.firstName ? (t?.lastName ? `${t.firstName}${t.lastName}` : t.firstName) : undefined;
  return (
    t?.name ||
    full ||
    t?.username ||
    event.properties?.email ||
    t?.email ||
    (event.userId ? `User ${event.userId}` : undefined) ||
    `Anonymous user ${event.anonymousId}`
  );
}

function whitelist(config) {
  const out = [];
  for (const s of config.whitelistedTraitsSettings ?? []) {
    if (nonBlank(s?.trait)) out.push(s.trait.trim());
  }
  return out;
}

// "key: value " for each key (only the allowed ones when a list is given).
function keyValues(obj, allowed) {
  let out = "";
  for (const [k, v] of Object.entries(obj ?? {})) {
    if (allowed && allowed.length > 0 && !allowed.includes(k)) continue;
    out += `${k}: ${show(v)} `;
  }
  return out;
}

function embed(config, scope, callType) {
  const title = nonBlank(config.embedTitleTemplate)
    ? render(config.embedTitleTemplate.trim(), scope)
    : "Message from Rudderstack ";
  const description = nonBlank(config.embedDescriptionTemplate)
    ? render(config.embedDescriptionTemplate.trim(), scope)
    : `${callType} call made`;
  return { title: cut(title, TITLE_MAX), description: cut(description, DESCRIPTION_MAX) };
}

function endpoint(config) {
  const url = String(config.webhookUrl).trim();
  if (!nonBlank(config.apiBaseUrl)) return url;
  const path = url.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/i, "");
  return `${baseUrl(config.apiBaseUrl, "")}${path}`;
}

function identifyText(event, config) {
  const allowed = whitelist(config);
  const traits = traitsOf(event) ?? {};
  const scope = { name: userName(event), ...traits, traits: keyValues(traits, allowed), traitsList: traits };
  let text;
  if (nonBlank(config.identifyTemplate)) {
    text = render(config.identifyTemplate.trim(), scope);
  } else {
    const keys = allowed.length > 0 ? allowed : Object.keys(traits);
    text = `Identified ${show(scope.name)} with ` + keys.map((k) => `${k}: ${show(scope[k])} `).join("");
  }
  return { text, scope, callType: "Identify" };
}

function trackText(event, config) {
  if (!event.event) throw new DestinationError("Event name is required", 400);
  const name = String(event.event);
  let template;
  for (const s of config.eventTemplateSettings ?? []) {
    if (!nonBlank(s?.eventName) || !nonBlank(s?.eventTemplate)) continue;
    const wanted = s.eventName.trim();
    let hit = false;
    if (s.eventRegex) {
      try {
        hit = new RegExp(wanted).test(name);
      } catch {
        hit = false;
      }
    } else {
      hit = wanted === name;
    }
    if (hit) {
      template = s.eventTemplate.trim();
      break;
    }
  }
  const traits = traitsOf(event) ?? {};
  const properties = event.properties ?? {};
  const scope = {
    name: userName(event),
    event: name,
    ...properties,
    properties: event.properties,
    propertiesList: keyValues(properties),
    traits: keyValues(traits, whitelist(config)),
    traitsList: traits,
  };
  const text = render(template ?? "{{name}} did {{event}} with {{propertiesList}}", scope);
  return { text, scope, callType: "Track" };
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!nonBlank(config.webhookUrl)) throw new DestinationError("webhookUrl is required", 400);
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  let built;
  if (type === "identify") built = identifyText(event, config);
  else if (type === "track") built = trackText(event, config);
  else throw new UnsupportedEventError(`Event type ${type} is not supported`);
  const body = { content: cut(built.text, CONTENT_MAX) };
  if (config.embedFlag) body.embeds = [embed(config, built.scope, built.callType)];
  return {
    method: "POST",
    endpoint: endpoint(config),
    headers: { "Content-Type": "application/json" },
    params: {},
    body: { JSON: body },
  };
}
