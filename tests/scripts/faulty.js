// Test transformation: fails on purpose. "Boom" throws, "Loop" never ends, "Hog" grows the
// heap without bound, "Buffer" asks for a 1 GB array buffer; everything else passes.
export function transformEvent(event) {
  if (event.event === "Boom") throw new Error(`boom for ${event.messageId}`);
  if (event.event === "Loop") {
    for (;;) {}
  }
  if (event.event === "Hog") {
    const keep = [];
    for (let i = 0; i < 1e9; i++) keep.push(new Array(100000).fill(i));
  }
  if (event.event === "Buffer") {
    const big = new Uint8Array(1 << 30);
    big[0] = 1;
  }
  event.properties = { ...event.properties, checked: true };
  return event;
}
