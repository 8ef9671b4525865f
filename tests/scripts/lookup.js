// Test transformation: async, looks the user up with fetch and fetchV2.
export async function transformEvent(event) {
  const url = `${event.properties.lookup}?user=${encodeURIComponent(event.userId)}`;
  const body = await fetch(url);
  const res = await fetchV2(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: { user: event.userId },
  });
  event.properties.lookedUp = body.ok === true;
  event.properties.lookupStatus = res.status;
  return event;
}
