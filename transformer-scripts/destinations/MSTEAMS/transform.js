// Microsoft Teams through a channel's incoming webhook: an Office 365 / Microsoft 365
// connector URL (https://<tenant>.webhook.office.com/webhookb2/…) or a Workflows "When a
// Teams webhook request is received" URL (https://…logic.azure.com/workflows/…/invoke?…).
// See learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using.
//   POST <webhookUrl>  an Adaptive Card message (default):
//     {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
//      "contentUrl": null, "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
//      "type": "AdaptiveCard", "version": "1.2", "body": [TextBlock title?, TextBlock text]}}]}
//   or, with cardType "messageCard", a legacy connector card:
//     {"@type": "MessageCard", "@context": "https://schema.org/extensions", "summary", "title"?,
//      "text", "themeColor"?}
// Auth: the webhook URL carries its own key (connector URLs) or signature (`sig`, Workflows).
// Config (the house keys of Keel's chat destinations, as RudderStack's SLACK / DISCORD):
// webhookUrl (required); identifyTemplate; eventTemplateSettings ([{eventName,
// eventTemplate, eventRegex}]: the first setting whose name equals the event, or whose regex
// matches it, gives the track text); whitelistedTraitsSettings ([{trait}]: the traits shown
// by {{traits}} and the default identify text); cardType ("adaptiveCard", the default, or
// "messageCard"); titleTemplate (a bold heading / the card title); themeColor (messageCard
// accent, hex like "0076D7").
// Keel extension: apiBaseUrl replaces the webhook URL's origin (its path and query are kept).
// Templates are Handlebars-style: {{name}}, {{event}}, {{traits}} (the "key: value " list),
// {{traitsList.x}}, {{properties.x}}, {{propertiesList}}, any trait (identify) or property
// (track) by its own name, {{"a key"}} for a name with spaces; {{{x}}} is the same. Objects
// render as JSON. Teams renders Markdown in the text.
// Mapping:
//   identify → default "Identified <name> with <key>: <value> …" over the whitelisted traits
//     (all traits when none is whitelisted).
//   track → default "<name> did <event> with <key>: <value> …" over the properties.
//   <name>: traits.name, else firstName+lastName, username, properties.email, traits.email,
//     "User <userId>", "Anonymous user <anonymousId>".
//   page, screen, group, alias → skipped (like Keel's other chat destinations: identify and
//     track only).
// Teams takes at most 28 KB per message: the text is cut to 20,000 UTF-8 bytes.
// batch() sends each event's message on its own (a webhook posts one message per call); it
// exists for batchResponse(): Teams connectors answer a throttled post with HTTP 200 and the
// text "Microsoft Teams endpoint returned HTTP error 429" in the body, which is read as a
// 429 (retried) rather than a delivery. maxBatchSize 4: connectors allow 4 posts a second
// per webhook, and a batch's requests go out together.
import { DestinationError, UnsupportedEventError, baseUrl } from "keel";
import { identifyText, nonBlank, render, trackText } from "chat";

export const maxBatchSize = 4;

const TEXT_MAX_BYTES = 20000;
const THROTTLED = /HTTP error 429/i;

// `s` cut to at most `max` UTF-8 bytes (on a character boundary).
function cutBytes(s, max) {
  let bytes = 0;
  let i = 0;
  for (const ch of s) {
    const cp = ch.codePointAt(0);
    const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (bytes + n > max) return s.slice(0, i);
    bytes += n;
    i += ch.length;
  }
  return s;
}

function endpoint(config) {
  const url = String(config.webhookUrl).trim();
  if (!nonBlank(config.apiBaseUrl)) return url;
  const rest = url.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i, "");
  return `${baseUrl(config.apiBaseUrl, "")}${rest}`;
}

function adaptiveCard(title, text) {
  const body = [];
  if (title) body.push({ type: "TextBlock", text: title, weight: "Bolder", size: "Medium", wrap: true });
  body.push({ type: "TextBlock", text, wrap: true });
  return {
    type: "message",
    attachments: [
      {
        contentType: "application/vnd.microsoft.card.adaptive",
        contentUrl: null,
        content: {
          $schema: "http://adaptivecards.io/schemas/adaptive-card.json",
          type: "AdaptiveCard",
          version: "1.2",
          body,
        },
      },
    ],
  };
}

function messageCard(title, text, config) {
  const card = {
    "@type": "MessageCard",
    "@context": "https://schema.org/extensions",
    summary: cutBytes(title || text, 250),
  };
  if (title) card.title = title;
  card.text = text;
  if (nonBlank(config.themeColor)) card.themeColor = config.themeColor.trim().replace(/^#/, "");
  return card;
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
  const text = cutBytes(built.text, TEXT_MAX_BYTES);
  const title = nonBlank(config.titleTemplate) ? cutBytes(render(config.titleTemplate.trim(), built.scope), 1000) : undefined;
  const cardType = String(config.cardType ?? "adaptiveCard").toLowerCase();
  const body = cardType === "messagecard" ? messageCard(title, text, config) : adaptiveCard(title, text);
  return {
    method: "POST",
    endpoint: endpoint(config),
    headers: { "Content-Type": "application/json" },
    params: {},
    body: { JSON: body },
  };
}

// One message per webhook call: each event's request goes on its own.
export function batch(requests) {
  return requests.map((request, i) => ({ request, events: [i] }));
}

// A 2xx whose body reports Teams' throttling is a 429 (retried).
export function batchResponse(response, requests) {
  const body = typeof response.body === "string" ? response.body : JSON.stringify(response.body ?? "");
  if (response.status >= 200 && response.status < 300 && THROTTLED.test(body)) {
    return requests.map(() => ({ status: 429, error: `Microsoft Teams throttled the webhook: ${body.slice(0, 200)}` }));
  }
  return null;
}
