// Mixpanel through its ingestion APIs: events go to /import (Basic auth with a service
// account, or the project's API secret), profile updates to /engage#profile-set.
// Config (RudderStack's keys): token, apiSecret, or serviceAccountUserName +
// serviceAccountSecret + projectId; dataResidency ("us", "eu" or "in").
// Keel extension: apiBaseUrl replaces the regional origin (a proxy, or a local server).
// track → /import; page/screen → /import "Loaded a Page|Screen"; identify → /engage $set
// (plus $identify on /import when an anonymousId merges into a userId); alias → /import
// $create_alias; group → /engage $set of the group key.
import { DestinationError, pick, eventTimeMs, traitsOf, compact, baseUrl, typeOf, base64 } from "keel";

const ORIGINS = {
  us: "https://api.mixpanel.com",
  eu: "https://api-eu.mixpanel.com",
  in: "https://api-in.mixpanel.com",
};

// Reserved profile properties take Mixpanel's `$` names.
const PROFILE_KEYS = {
  email: "$email",
  phone: "$phone",
  firstName: "$first_name",
  firstname: "$first_name",
  first_name: "$first_name",
  lastName: "$last_name",
  lastname: "$last_name",
  last_name: "$last_name",
  name: "$name",
  avatar: "$avatar",
  createdAt: "$created",
  created_at: "$created",
  city: "$city",
  country: "$country_code",
};

function auth(config) {
  if (config.serviceAccountUserName && config.serviceAccountSecret) {
    if (!config.projectId) throw new DestinationError("projectId is required with a service account", 400);
    return { header: `Basic ${base64(`${config.serviceAccountUserName}:${config.serviceAccountSecret}`)}`, projectId: config.projectId };
  }
  if (config.apiSecret) return { header: `Basic ${base64(`${config.apiSecret}:`)}` };
  throw new DestinationError("apiSecret or a service account (serviceAccountUserName, serviceAccountSecret, projectId) is required", 400);
}

function distinctId(event) {
  const id = event.userId ?? event.anonymousId;
  if (id === undefined || id === null || id === "") throw new DestinationError("a userId or anonymousId is required", 400);
  return String(id);
}

function importRequest(origin, config, name, properties) {
  const a = auth(config);
  return {
    method: "POST",
    endpoint: `${origin}/import`,
    headers: { "Content-Type": "application/json", Authorization: a.header },
    params: compact({ strict: 1, project_id: a.projectId }),
    body: { JSON_ARRAY: [{ event: name, properties }] },
  };
}

function engageRequest(origin, config, event, set) {
  return {
    method: "POST",
    endpoint: `${origin}/engage`,
    headers: { "Content-Type": "application/json" },
    params: { verbose: 1 },
    body: {
      JSON_ARRAY: [
        compact({
          $token: config.token,
          $distinct_id: distinctId(event),
          $ip: pick(event, "context.ip", "request_ip"),
          $set: set,
        }),
      ],
    },
  };
}

// Mixpanel event properties: the event's own `extra` properties, then Keel's (which win),
// then `overrides` (for $identify and $create_alias).
function eventProperties(event, config, extra, overrides = {}) {
  const ctx = event.context ?? {};
  return compact({
    ...extra,
    token: config.token,
    distinct_id: distinctId(event),
    time: eventTimeMs(event),
    $insert_id: event.messageId,
    $device_id: event.anonymousId,
    $user_id: event.userId,
    ip: ctx.ip ?? event.request_ip,
    $os: ctx.os?.name,
    $current_url: ctx.page?.url,
    $referrer: ctx.page?.referrer,
    $app_version_string: ctx.app?.version,
    $lib_version: ctx.library?.version,
    mp_lib: ctx.library?.name,
    ...overrides,
  });
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  if (!config.token) throw new DestinationError("token is required", 400);
  const residency = String(config.dataResidency ?? "us").toLowerCase();
  const origin = baseUrl(config.apiBaseUrl, ORIGINS[residency] ?? ORIGINS.us);
  const type = typeOf(event, ["track", "page", "screen", "identify", "alias", "group"]);
  const props = event.properties ?? {};
  if (type === "track") {
    if (!event.event) throw new DestinationError("a track event needs an event name", 400);
    return importRequest(origin, config, String(event.event), eventProperties(event, config, props));
  }
  if (type === "page" || type === "screen") {
    const kind = type === "page" ? "Page" : "Screen";
    const extra = { ...props, name: event.name ?? props.name };
    return importRequest(origin, config, `Loaded a ${kind}`, eventProperties(event, config, extra));
  }
  if (type === "identify") {
    const set = {};
    for (const [k, v] of Object.entries(traitsOf(event))) set[PROFILE_KEYS[k] ?? k] = v;
    const out = [engageRequest(origin, config, event, set)];
    if (event.userId && event.anonymousId && String(event.userId) !== String(event.anonymousId)) {
      out.unshift(
        importRequest(origin, config, "$identify", eventProperties(event, config, {}, {
          $identified_id: String(event.userId),
          $anon_id: String(event.anonymousId),
        })),
      );
    }
    return out;
  }
  if (type === "alias") {
    if (!event.previousId || !event.userId) throw new DestinationError("alias needs previousId and userId", 400);
    return importRequest(origin, config, "$create_alias", eventProperties(event, config, {}, {
      distinct_id: String(event.previousId),
      alias: String(event.userId),
    }));
  }
  if (!event.groupId) throw new DestinationError("a group event needs a groupId", 400);
  const key = String(pick(event, "traits.groupKey") ?? "company");
  return engageRequest(origin, config, event, { [key]: [String(event.groupId)] });
}
