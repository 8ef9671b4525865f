// Test transformation: enriches with metadata(), masks an email with the "pii" library,
// drops "Drop me" events, splits "Split" events in two, and logs.
import { mask } from "pii";

export function transformEvent(event, metadata) {
  if (event.event === "Drop me") return null;
  const m = metadata(event);
  event.properties = {
    ...event.properties,
    enriched: true,
    destinationId: m.destinationId,
    sourceName: m.sourceName,
    metaMessageId: m.messageId,
  };
  if (event.context?.traits?.email) event.context.traits.email = mask(event.context.traits.email);
  log("enriched", event.messageId);
  if (event.event === "Split") return [event, { ...event, event: "Split part 2" }];
  return event;
}
