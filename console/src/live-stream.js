// Reads GET /admin/live (Server-Sent Events) with fetch and a stream reader, because
// EventSource cannot send the Bearer header. Calls onFrame(type, data) per event; onEnd once
// when the stream ends ({reason} for a drop, {error} for a failure); close() aborts it.
import { authHeaders, refused } from './api.js';

export function openLive(query, { onOpen, onFrame, onEnd }) {
  const ctrl = new AbortController();
  let ended = false;
  const end = (info) => {
    if (!ended && !ctrl.signal.aborted) {
      ended = true;
      onEnd(info);
    }
  };
  (async () => {
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (!headers) return;
    const qs = new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString();
    let res;
    try {
      res = await fetch(`/admin/live${qs ? `?${qs}` : ''}`, {
        headers,
        signal: ctrl.signal,
        cache: 'no-store',
      });
    } catch (e) {
      end({ error: e.message });
      return;
    }
    if (refused(res)) return;
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      end({ error: (body && body.error) || `HTTP ${res.status}` });
      return;
    }
    onOpen();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let type = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (!line || line.startsWith(':')) continue;
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            let v = c < 0 ? '' : line.slice(c + 1);
            if (v.startsWith(' ')) v = v.slice(1);
            if (field === 'event') type = v;
            else if (field === 'data') data += (data ? '\n' : '') + v;
          }
          if (!data) continue;
          let parsed;
          try {
            parsed = JSON.parse(data);
          } catch {
            continue;
          }
          if (ctrl.signal.aborted) return;
          onFrame(type, parsed);
          if (type === 'dropped') {
            end({ reason: parsed.reason });
            ctrl.abort();
            return;
          }
        }
      }
      end({ reason: 'the server closed the stream' });
    } catch (e) {
      end({ error: e.message });
    }
  })();
  return { close: () => ctrl.abort() };
}
