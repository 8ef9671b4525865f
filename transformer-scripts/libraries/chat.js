// Helpers the chat destinations share (DISCORD, MSTEAMS): RudderStack's message templates
// ({{path}}, {{{path}}}, {{"literal key"}}) and the default identify/track texts.
// `import { ... } from "chat"`.

import { DestinationError } from "keel";

export function get(obj, path) {
  if (obj === null || obj === undefined) return undefined;
  if (Object.prototype.hasOwnProperty.call(obj, path)) return obj[path];
  let v = obj;
  for (const key of path.replace(/^this\./, "").replace(/^\.\//, "").split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key.replace(/^\[(.*)\]$/, "$1")];
  }
  return v;
}

export function show(v) {
  if (v === undefined || v === null) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// Renders {{path}}, {{{path}}} and {{"literal key"}} against `scope`.
export function render(template, scope) {
  return template.replace(/\{\{\{?\s*(?:"([^"]*)"|'([^']*)'|([^{}\s]+))\s*\}?\}\}/g, (_, dq, sq, path) => {
    if (dq !== undefined || sq !== undefined) return show(scope[dq ?? sq]);
    return show(get(scope, path));
  });
}

export const nonBlank = (s) => typeof s === "string" && s.trim().length > 0;

function traitsOf(event) {
  return event.traits || event.context?.traits || undefined;
}

export function userName(event) {
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

export function whitelist(config) {
  const out = [];
  for (const s of config.whitelistedTraitsSettings ?? []) {
    if (nonBlank(s?.trait)) out.push(s.trait.trim());
  }
  return out;
}

// "key: value " for each key (only the allowed ones when a list is given).
export function keyValues(obj, allowed) {
  let out = "";
  for (const [k, v] of Object.entries(obj ?? {})) {
    if (allowed && allowed.length > 0 && !allowed.includes(k)) continue;
    out += `${k}: ${show(v)} `;
  }
  return out;
}

export function identifyText(event, config) {
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
  return { text, scope };
}

export function trackText(event, config) {
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
  return { text, scope };
}
