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
import { identifyText, nonBlank, render, trackText } from "chat";

const CONTENT_MAX = 2000;
const TITLE_MAX = 256;
const DESCRIPTION_MAX = 4096;

function cut(s, max) {
  return s.length > max ? s.slice(0, max) : s;
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

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!nonBlank(config.webhookUrl)) throw new DestinationError("webhookUrl is required", 400);
  if (!event.type) throw new DestinationError("Event type is required", 400);
  const type = String(event.type).toLowerCase();
  let built, callType;
  if (type === "identify") [built, callType] = [identifyText(event, config), "Identify"];
  else if (type === "track") [built, callType] = [trackText(event, config), "Track"];
  else throw new UnsupportedEventError(`Event type ${type} is not supported`);
  const body = { content: cut(built.text, CONTENT_MAX) };
  if (config.embedFlag) body.embeds = [embed(config, built.scope, callType)];
  return {
    method: "POST",
    endpoint: endpoint(config),
    headers: { "Content-Type": "application/json" },
    params: {},
    body: { JSON: body },
  };
}
