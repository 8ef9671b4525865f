// Keel's glue between Rust and scripts, run once in every isolate's context before any
// script. It gives scripts RudderStack's runtime functions (log, fetch, fetchV2) and turns
// one call from Rust (a JSON array of events) into one JSON answer, so a batch of events
// crosses the Rust/V8 boundary twice whatever its size.
"use strict";
(() => {
  const hostFetch = globalThis.__keel_host_fetch;
  delete globalThis.__keel_host_fetch;
  // Digests in Rust (`keel`'s sha256, md5, hmacSha256… wrap it): digest(algorithm, text,
  // key, "hex" | "base64").
  const hostDigest = globalThis.__keel_host_digest;
  delete globalThis.__keel_host_digest;
  Object.defineProperty(globalThis, "__keelDigest", {
    value: (algorithm, data, key, encoding) =>
      hostDigest(String(algorithm), String(data ?? ""), key == null ? undefined : String(key), encoding ?? "hex"),
    enumerable: false,
  });

  const LOG_LINES = 200;
  const LOG_BYTES = 64 * 1024;
  let logs = [];
  let logBytes = 0;
  let droppedLogs = 0;
  const show = (v) => {
    if (typeof v === "string") return v;
    if (v instanceof Error) return v.stack || `${v.name}: ${v.message}`;
    try {
      const s = JSON.stringify(v);
      return s === undefined ? String(v) : s;
    } catch {
      return String(v);
    }
  };
  const log = (...args) => {
    if (logs.length >= LOG_LINES || logBytes >= LOG_BYTES) {
      droppedLogs++;
      return;
    }
    const line = args.map(show).join(" ");
    logs.push(line);
    logBytes += line.length;
  };
  globalThis.log = log;
  globalThis.console = { log, info: log, warn: log, error: log, debug: log };

  // One HTTP request through the host (blocking; the same private-address policy and
  // timeout as destinations, and a cap on requests per call).
  const request = (url, options) => {
    const opts = options ?? {};
    let body = opts.body;
    if (body !== undefined && typeof body !== "string") body = JSON.stringify(body);
    const answer = JSON.parse(
      hostFetch(String(url), JSON.stringify({
        method: opts.method ?? "GET",
        headers: opts.headers ?? {},
        body: body ?? null,
      })),
    );
    if (answer.error !== undefined) throw new Error(answer.error);
    let parsed = answer.body;
    try {
      parsed = JSON.parse(answer.body);
    } catch {
      // Not JSON: keep the text.
    }
    return { status: answer.status, headers: answer.headers, body: parsed };
  };
  // RudderStack's fetch: the parsed body.
  globalThis.fetch = async (url, options) => request(url, options).body;
  // RudderStack's fetchV2: status, headers and parsed body.
  globalThis.fetchV2 = async (url, options) => request(url, options);

  const errorOf = (e) => {
    const error = e instanceof Error ? `${e.name}: ${e.message}` : show(e);
    const stack = e instanceof Error && e.stack ? String(e.stack) : undefined;
    let status = e && typeof e === "object" ? (e.status ?? e.statusCode) : undefined;
    if (typeof status !== "number") status = undefined;
    const drop = e !== null && typeof e === "object" && e.drop === true ? true : undefined;
    return { error, stack, status, drop };
  };
  const outOf = (r) => (r == null ? [] : Array.isArray(r) ? r.filter((x) => x != null) : [r]);
  const isThenable = (v) => v !== null && typeof v === "object" && typeof v.then === "function";

  const finish = (answer) => {
    answer.logs = logs;
    answer.droppedLogs = droppedLogs;
    logs = [];
    logBytes = 0;
    droppedLogs = 0;
    try {
      return JSON.stringify(answer);
    } catch (e) {
      return JSON.stringify({ callError: errorOf(e), logs: answer.logs, droppedLogs: answer.droppedLogs });
    }
  };

  // Per-event functions (transformEvent, process): one answer per input event.
  const perEvent = (f, items, second) => {
    const results = new Array(items.length);
    let pending = null;
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      try {
        const r = f(item.e, second(item));
        if (isThenable(r)) {
          (pending ??= []).push(
            Promise.resolve(r).then(
              (v) => { results[i] = { out: outOf(v) }; },
              (e) => { results[i] = errorOf(e); },
            ),
          );
        } else {
          results[i] = { out: outOf(r) };
        }
      } catch (e) {
        results[i] = errorOf(e);
      }
    }
    return pending
      ? Promise.all(pending).then(() => finish({ items: results }))
      : finish({ items: results });
  };

  // RudderStack's metadata object for one item, built when the script asks for it.
  const metaOf = (common, item) => ({
    ...common,
    eventName: item.e?.event,
    eventType: item.e?.type,
    receivedAt: item.e?.receivedAt,
    ...item.m,
  });

  const runEvent = (f, input) => {
    const { common, items } = JSON.parse(input);
    return perEvent(f, items, (item) => () => metaOf(common, item));
  };

  const runBatch = (f, input) => {
    const { common, items } = JSON.parse(input);
    const events = items.map((x) => x.e);
    const byObject = new Map();
    const byId = new Map();
    for (const x of items) {
      byObject.set(x.e, x);
      if (x.m && x.m.messageId !== undefined) byId.set(x.m.messageId, x);
    }
    const metadata = (ev) => {
      const item =
        byObject.get(ev) ?? (ev && typeof ev === "object" ? byId.get(ev.messageId) : undefined) ?? items[0];
      return item ? metaOf(common, item) : { ...common };
    };
    const done = (v) => finish({ batch: outOf(v) });
    const failed = (e) => finish({ callError: errorOf(e) });
    try {
      const r = f(events, metadata);
      return isThenable(r) ? Promise.resolve(r).then(done, failed) : done(r);
    } catch (e) {
      return failed(e);
    }
  };

  const runDestination = (f, input, destination) => {
    const { items } = JSON.parse(input);
    const dest = JSON.parse(destination);
    return perEvent(f, items, () => dest);
  };

  // A destination script's other exports: `describe` reports which optional ones exist
  // and their limits; any other entry calls that export with the JSON array `input` as its
  // arguments, then the destination, and answers `{ value }`.
  const describe = (ns) => ({
    batch: typeof ns.batch === "function",
    batchResponse: typeof ns.batchResponse === "function",
    maxBatchSize: typeof ns.maxBatchSize === "number" ? ns.maxBatchSize : undefined,
    maxBatchBytes: typeof ns.maxBatchBytes === "number" ? ns.maxBatchBytes : undefined,
  });
  const runExport = (ns, entry, input, destination) => {
    if (entry === "describe") return finish({ value: describe(ns) });
    const f = ns[entry];
    if (typeof f !== "function") {
      return finish({ callError: { error: `Error: the script exports no function ${entry}` } });
    }
    const done = (v) => finish({ value: v === undefined ? null : v });
    const failed = (e) => finish({ callError: errorOf(e) });
    try {
      const r = f(...JSON.parse(input), destination === undefined ? undefined : JSON.parse(destination));
      return isThenable(r) ? Promise.resolve(r).then(done, failed) : done(r);
    } catch (e) {
      return failed(e);
    }
  };

  // Called once per compiled script: picks the entry point and returns the function Rust
  // calls with each batch.
  globalThis.__keel_bind = (ns, kind) => {
    if (kind === "destination") {
      if (typeof ns.process !== "function") {
        throw new Error("a destination script must export function process(event, destination)");
      }
      return (input, destination, entry) =>
        entry === undefined
          ? runDestination(ns.process, input, destination)
          : runExport(ns, entry, input, destination);
    }
    if (typeof ns.transformBatch === "function") return (input) => runBatch(ns.transformBatch, input);
    if (typeof ns.transformEvent === "function") return (input) => runEvent(ns.transformEvent, input);
    throw new Error(
      "a transformation must export function transformEvent(event, metadata) or transformBatch(events, metadata)",
    );
  };
})();
