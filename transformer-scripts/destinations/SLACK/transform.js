// Slack through an incoming webhook (POST <webhookUrl> with {"text": …}).
// Config (RudderStack's keys): webhookUrl; identifyTemplate; eventTemplateSettings
// ([{eventName, eventTemplate, eventRegex}]); whitelistedTraitsSettings ([{trait}]).
// Templates use {{name}}, {{event}}, {{traits.x}}, {{properties.x}} and any event path.
// identify → "Identified <name> <traits>"; track → "<name> did <event>". Others: 400.
import { DestinationError, pick, traitsOf, typeOf } from "keel";

function userName(event) {
  const t = traitsOf(event);
  const full = [t.firstName ?? t.first_name, t.lastName ?? t.last_name].filter(Boolean).join(" ");
  return t.name ?? (full || undefined) ?? t.username ?? event.userId ?? event.anonymousId ?? "Anonymous user";
}

function render(template, event, name) {
  const scope = { ...event, name, traits: traitsOf(event) };
  return template.replace(/\{\{\s*([\w.$]+)\s*\}\}/g, (_, path) => {
    const v = pick(scope, path);
    if (v === undefined) return "";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  });
}

function matches(setting, eventName) {
  if (setting.eventRegex) {
    try {
      return new RegExp(setting.eventName).test(eventName);
    } catch {
      return false;
    }
  }
  return setting.eventName === eventName;
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.webhookUrl) throw new DestinationError("webhookUrl is required", 400);
  const type = typeOf(event, ["identify", "track"]);
  const name = userName(event);
  let text;
  if (type === "identify") {
    if (config.identifyTemplate) {
      text = render(config.identifyTemplate, event, name);
    } else {
      const allowed = (config.whitelistedTraitsSettings ?? []).map((s) => s.trait).filter(Boolean);
      const traits = traitsOf(event);
      const shown = allowed.length
        ? Object.fromEntries(Object.entries(traits).filter(([k]) => allowed.includes(k)))
        : traits;
      text = `Identified ${name} ${JSON.stringify(shown)}`;
    }
  } else {
    if (!event.event) throw new DestinationError("a track event needs an event name", 400);
    const setting = (config.eventTemplateSettings ?? []).find((s) => s.eventName && matches(s, String(event.event)));
    text = setting?.eventTemplate ? render(setting.eventTemplate, event, name) : `${name} did ${event.event}`;
  }
  return {
    method: "POST",
    endpoint: config.webhookUrl,
    headers: { "Content-Type": "application/json" },
    body: { JSON: { text } },
  };
}
