// Amplitude through its HTTP V2 API (POST https://api2.amplitude.com/2/httpapi, or
// https://api.eu.amplitude.com/2/httpapi for EU residency), one event per request.
// Config (RudderStack's keys): apiKey, residencyServer ("standard" or "EU").
// Keel extension: apiBaseUrl replaces the API's origin (a proxy, or a local server in tests).
// track → event_type = event name; page/screen → "Viewed <name> Page|Screen"; identify →
// $identify with user_properties.$set; group → $identify with groups. alias is refused (400).
import { DestinationError, pick, eventTimeMs, traitsOf, compact, baseUrl, typeOf } from "keel";

function device(event) {
  const ctx = event.context ?? {};
  return compact({
    platform: ctx.device?.type ?? (ctx.library?.name?.includes("javascript") ? "Web" : undefined),
    os_name: ctx.os?.name,
    os_version: ctx.os?.version,
    device_model: ctx.device?.model,
    device_manufacturer: ctx.device?.manufacturer,
    app_version: ctx.app?.version,
    carrier: ctx.network?.carrier,
    country: ctx.location?.country,
    city: ctx.location?.city,
    language: ctx.locale,
    ip: ctx.ip ?? event.request_ip,
  });
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.apiKey) throw new DestinationError("apiKey is required", 400);
  const type = typeOf(event, ["track", "page", "screen", "identify", "group"]);
  const userId = event.userId != null && event.userId !== "" ? String(event.userId) : undefined;
  const deviceId = pick(event, "context.device.id", "anonymousId");
  if (!userId && !deviceId) throw new DestinationError("Amplitude needs a userId or a device id", 400);

  const am = {
    user_id: userId,
    device_id: deviceId !== undefined ? String(deviceId) : undefined,
    time: eventTimeMs(event),
    insert_id: event.messageId,
    library: "keel",
    ...device(event),
  };
  const props = event.properties ?? {};
  if (type === "track") {
    if (!event.event) throw new DestinationError("a track event needs an event name", 400);
    am.event_type = String(event.event);
    am.event_properties = props;
    if (props.revenue !== undefined) am.revenue = Number(props.revenue);
    if (props.price !== undefined) am.price = Number(props.price);
    if (props.quantity !== undefined) am.quantity = Number(props.quantity);
  } else if (type === "page" || type === "screen") {
    const kind = type === "page" ? "Page" : "Screen";
    const name = event.name ?? props.name;
    am.event_type = name ? `Viewed ${name} ${kind}` : `Viewed ${kind}`;
    am.event_properties = props;
  } else if (type === "identify") {
    am.event_type = "$identify";
    am.user_properties = { $set: traitsOf(event) };
  } else {
    if (!event.groupId) throw new DestinationError("a group event needs a groupId", 400);
    const groupType = String(pick(event, "traits.groupType") ?? "group");
    am.event_type = "$identify";
    am.groups = { [groupType]: String(event.groupId) };
    am.user_properties = { $set: { [groupType]: String(event.groupId) } };
  }
  const session = pick(event, "context.sessionId", "integrations.Amplitude.session_id");
  if (session !== undefined) am.session_id = Number(session);

  const origin =
    String(config.residencyServer ?? "").toUpperCase() === "EU"
      ? "https://api.eu.amplitude.com"
      : "https://api2.amplitude.com";
  return {
    method: "POST",
    endpoint: `${baseUrl(config.apiBaseUrl, origin)}/2/httpapi`,
    headers: { "Content-Type": "application/json", Accept: "*/*" },
    body: { JSON: { api_key: config.apiKey, events: [compact(am)] } },
  };
}
