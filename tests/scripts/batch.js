// Test transformation: transformBatch filters and annotates a whole batch.
export function transformBatch(events, metadata) {
  return events
    .filter((e) => e.event !== "Drop me")
    .map((e) => ({ ...e, properties: { ...e.properties, batched: true, dest: metadata(e).destinationId } }));
}
