// The Transformations page: picks a user transformation or destination script
// (GET /admin/scripts), edits its text, runs it — saved or not — on a pasted or a recently
// accepted event with a workspace destination's settings (POST /admin/scripts/run, the
// engine of `keel transform test`) and shows output, logs and error; Save writes the file
// and reloads (PUT /admin/scripts/file), showing the reload's problems if it refuses.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { fmtTime, pretty, useAction, useLoad } from '../util.js';

const SAMPLE_EVENT = {
  type: 'track',
  event: 'Order Completed',
  userId: 'user-1',
  messageId: 'console-sample-1',
  properties: { orderId: 'o-1', revenue: 42.5, currency: 'EUR' },
  context: { traits: { email: 'jane@example.com' } },
};

export function Transformations() {
  const scripts = useLoad(() => api('/admin/scripts'), []);
  const workspace = useLoad(() => api('/admin/workspace'), []);
  const recent = useLoad(() => api('/admin/events/recent'), []);
  const [path, setPath] = useState('');
  const [file, setFile] = useState(null);
  const [text, setText] = useState('');
  const [eventText, setEventText] = useState(pretty(SAMPLE_EVENT));
  const [destId, setDestId] = useState('');
  const [run, doRun] = useAction();
  const [save, doSave] = useAction();
  const [eventError, setEventError] = useState(null);

  // The workspace's own transformations first, then the destination scripts.
  const list = ((scripts.data && scripts.data.scripts) || [])
    .slice()
    .sort((a, b) => (a.kind === b.kind ? 0 : a.kind === 'transformation' ? -1 : 1));
  useEffect(() => {
    if (!path && list.length) setPath(list[0].path);
  }, [list.length]);
  useEffect(() => {
    if (!path) return;
    let live = true;
    api(`/admin/scripts/file?path=${encodeURIComponent(path)}`)
      .then((f) => {
        if (!live) return;
        setFile(f);
        setText(f.text);
      })
      .catch(() => {});
    return () => {
      live = false;
    };
  }, [path]);

  const script = list.find((s) => s.path === path);
  const dests = [];
  for (const s of (workspace.data && workspace.data.workspace.sources) || []) {
    for (const d of s.destinations || []) dests.push(d);
  }
  const fitting = script && script.kind === 'destination'
    ? dests.filter((d) => (d.destinationDefinition?.name || '').toUpperCase() === script.name.toUpperCase())
    : dests.filter((d) => (d.transformations || []).some((t) => path.endsWith(t.file.replace(/^\.?\//, ''))));
  const choices = fitting.length ? fitting : dests;
  const events = (recent.data && recent.data.events) || [];

  const execute = () => {
    let event;
    try {
      event = JSON.parse(eventText);
      if (!event || typeof event !== 'object' || Array.isArray(event)) throw new Error('the event must be a JSON object');
    } catch (e) {
      setEventError(`The event is not valid JSON: ${e.message}`);
      return;
    }
    setEventError(null);
    const d = choices.find((x) => x.id === destId);
    const destination = d
      ? { id: d.id, name: d.name, config: d.config || {}, destinationDefinition: { name: d.destinationDefinition.name } }
      : {
          id: 'console',
          name: 'console',
          config: {},
          destinationDefinition: { name: script && script.kind === 'destination' ? script.name : 'TEST' },
        };
    doRun(() => api('/admin/scripts/run', { method: 'POST', body: { text, path, event, destination } }));
  };
  const store = () =>
    doSave(async () => {
      const r = await api('/admin/scripts/file', { method: 'PUT', body: { path, text } });
      setFile({ ...file, text });
      return r;
    });
  const dirty = file && file.text !== text;
  const r = run.result;
  const saveProblems = save.error && save.error.body && save.error.body.problems;

  return (
    <>
      <div class="page-head">
        <h1>Transformations</h1>
        <p class="sub">Edit a user transformation or a destination script, try it on an event, save to apply.</p>
      </div>
      <div class="grid-2">
        <section class="card" aria-labelledby="script-h">
          <h2 id="script-h">Script</h2>
          <div class="field">
            <label for="script-path">File</label>
            <select id="script-path" value={path} onChange={(e) => setPath(e.currentTarget.value)}>
              {list.map((s) => (
                <option key={s.path} value={s.path}>
                  {s.kind === 'destination' ? 'Destination' : 'Transformation'}: {s.name} — {s.path}
                </option>
              ))}
            </select>
          </div>
          <div class="field">
            <label for="script-text">
              Source {dirty && <span class="badge warn">unsaved</span>}
            </label>
            <textarea
              id="script-text"
              class="code"
              rows={22}
              wrap="off"
              spellcheck={false}
              value={text}
              onInput={(e) => setText(e.currentTarget.value)}
              onFocus={(e) => (e.currentTarget.dataset.escaped = '')}
              onKeyDown={(e) => {
                if (e.key === 'Tab' && !e.shiftKey && !e.ctrlKey && !e.altKey) {
                  // Indent instead of leaving the editor; Escape then Tab moves on.
                  if (e.currentTarget.dataset.escaped) return;
                  e.preventDefault();
                  const t = e.currentTarget;
                  const [a, b] = [t.selectionStart, t.selectionEnd];
                  setText(text.slice(0, a) + '  ' + text.slice(b));
                  requestAnimationFrame(() => t.setSelectionRange(a + 2, a + 2));
                } else e.currentTarget.dataset.escaped = e.key === 'Escape' ? '1' : '';
              }}
              aria-describedby="script-help"
            />
            <p id="script-help" class="hint">
              Tab indents; press Escape, then Tab, to leave the editor.
            </p>
          </div>
          <div class="actions">
            <button type="button" onClick={store} disabled={!path || save.busy || !dirty}>
              {save.busy ? 'Saving…' : 'Save and reload'}
            </button>
            <button type="button" class="ghost" disabled={!dirty} onClick={() => setText(file.text)}>
              Revert
            </button>
          </div>
          <div role="status">
            {save.result && `Saved ${path} and reloaded.`}
          </div>
          {save.error && (
            <div class="error" role="alert">
              <p>Not saved: {save.error.message}</p>
              {saveProblems && (
                <ul>
                  {saveProblems.map((p, i) => (
                    <li key={i}>
                      <code>{p.path}</code>: {p.message}
                    </li>
                  ))}
                </ul>
              )}
            </div>
          )}
        </section>
        <section class="card" aria-labelledby="try-h">
          <h2 id="try-h">Try it</h2>
          <div class="field">
            <label for="recent-event">Recently accepted event</label>
            <select
              id="recent-event"
              value=""
              onChange={(e) => {
                const ev = events[Number(e.currentTarget.value)];
                if (ev) setEventText(pretty(ev.event));
              }}
            >
              <option value="">paste one below, or pick…</option>
              {events.slice(0, 30).map((ev, i) => (
                <option key={i} value={i}>
                  {fmtTime(ev.receivedAt)} {ev.source} {ev.event.type} {ev.event.event || ev.event.name || ''}
                </option>
              ))}
            </select>
          </div>
          <div class="field">
            <label for="event-text">Event (JSON)</label>
            <textarea
              id="event-text"
              class="code"
              rows={10}
              spellcheck={false}
              value={eventText}
              onInput={(e) => setEventText(e.currentTarget.value)}
              aria-invalid={eventError ? 'true' : undefined}
              aria-describedby={eventError ? 'event-error' : undefined}
            />
            {eventError && (
              <p id="event-error" class="error">
                {eventError}
              </p>
            )}
          </div>
          <div class="field">
            <label for="run-destination">Destination settings</label>
            <select id="run-destination" value={destId} onChange={(e) => setDestId(e.currentTarget.value)}>
              <option value="">none (empty settings)</option>
              {choices.map((d) => (
                <option key={d.id} value={d.id}>
                  {d.name} ({d.id})
                </option>
              ))}
            </select>
          </div>
          <div class="actions">
            <button type="button" onClick={execute} disabled={!path || run.busy}>
              {run.busy ? 'Running…' : 'Run'}
            </button>
          </div>
          {run.error && (
            <p class="error" role="alert">
              Could not run: {run.error.message}
            </p>
          )}
          {r && (
            <div class="run-result" aria-live="polite">
              {r.error ? (
                <div class="error" id="run-error">
                  <h3>Error</h3>
                  <p>
                    {r.error.message}
                    {r.error.status ? ` (status ${r.error.status})` : ''}
                  </p>
                  {r.error.stack && <pre class="small">{r.error.stack}</pre>}
                </div>
              ) : (
                <>
                  <h3>Output</h3>
                  <pre id="run-output">{r.output === null ? 'null (the event is dropped)' : pretty(r.output)}</pre>
                </>
              )}
              <h3>Logs</h3>
              {r.logs.length ? (
                <pre id="run-logs">{r.logs.join('\n')}</pre>
              ) : (
                <p class="sub">No log lines.</p>
              )}
              {r.dropped_logs > 0 && <p class="sub">{r.dropped_logs} more lines dropped.</p>}
            </div>
          )}
        </section>
      </div>
    </>
  );
}
