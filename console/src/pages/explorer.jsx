// The Event explorer page: looks up one messageId with the explain API
// (GET /admin/events/{messageId}) and shows its path — stored, routed or filtered, and per
// destination its status, attempts and last response — plus recently accepted events to
// pick from. /console/events/<messageId> links straight to one event.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { navigate } from '../router.js';
import { fmtDateTime, fmtTime, pretty, useLoad } from '../util.js';

const STAGE = {
  processed: 'Stored, then routed by the processor.',
  waiting_for_processor: 'Stored; the processor has not routed it yet.',
  unknown: 'No stored copy in the dedup window, only its jobs.',
};
const STAGE_NAME = { processed: 'Processed', waiting_for_processor: 'Waiting', unknown: 'Not stored' };
const BADGE = { delivered: 'ok', filtered: 'off', pending: 'warn', dead_lettered: 'bad' };

function text(v) {
  if (v == null || v === '') return '';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function Path({ doc }) {
  const d = doc.detail || {};
  const dests = Object.entries(doc.destinations || {});
  return (
    <section class="card" aria-labelledby="path-h">
      <h2 id="path-h">
        Path of <span class="mono">{doc.messageId}</span>
      </h2>
      <ol class="path">
        {(d.stored || []).map((s) => (
          <li key={`s${s.job_id}`}>
            <strong>Accepted</strong> from source <span class="mono">{s.source_id}</span> at{' '}
            {fmtDateTime(s.received_at)} (request job {s.job_id})
          </li>
        ))}
        <li>
          <strong>{STAGE_NAME[doc.stage] || doc.stage}</strong>: {STAGE[doc.stage] || ''}
        </li>
        {(d.routing || []).map((r, i) => (
          <li key={`r${i}`}>
            <strong>Routed</strong> at {fmtDateTime(r.processed_at)} to{' '}
            {(r.routed || []).length ? (r.routed || []).join(', ') : 'no destination'}
            {r.filtered && Object.keys(r.filtered).length > 0 && (
              <>; filtered out of {Object.keys(r.filtered).join(', ')}</>
            )}
          </li>
        ))}
      </ol>
      {dests.length > 0 && (
        <div class="table-wrap">
          <table>
            <caption>Per destination</caption>
            <thead>
              <tr>
                <th scope="col">Destination</th>
                <th scope="col">Status</th>
                <th scope="col" class="num">Attempts</th>
                <th scope="col">Last answer</th>
                <th scope="col">When</th>
              </tr>
            </thead>
            <tbody>
              {dests.map(([id, x]) => (
                <tr key={id}>
                  <th scope="row" class="mono">
                    {id}
                  </th>
                  <td>
                    <span class={`badge ${BADGE[x.status] || 'info'}`}>{x.status.replace('_', ' ')}</span>
                  </td>
                  <td class="num">{x.attempts ?? '–'}</td>
                  <td class="wrap">
                    {x.last_status ? `HTTP ${x.last_status} ` : ''}
                    {text(x.reason) || text(x.last_error)}
                    {x.last_response && <pre class="small">{x.last_response}</pre>}
                  </td>
                  <td>
                    {x.failed_at
                      ? `failed ${fmtDateTime(x.failed_at)}`
                      : x.next_attempt_at
                        ? `next attempt ${fmtDateTime(x.next_attempt_at)}`
                        : '–'}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <details>
        <summary>Everything stored about it (JSON)</summary>
        <pre>{pretty(doc.detail)}</pre>
      </details>
    </section>
  );
}

export function Explorer({ route }) {
  const wanted = decodeURIComponent((route || '').replace(/^\//, ''));
  const [input, setInput] = useState(wanted);
  const [result, setResult] = useState({ doc: null, error: null, busy: false });
  const recent = useLoad(() => api('/admin/events/recent'), []);

  useEffect(() => {
    setInput(wanted);
    if (!wanted) {
      setResult({ doc: null, error: null, busy: false });
      return;
    }
    let live = true;
    setResult({ doc: null, error: null, busy: true });
    api(`/admin/events/${encodeURIComponent(wanted)}`)
      .then((doc) => live && setResult({ doc, error: null, busy: false }))
      .catch((error) => live && setResult({ doc: null, error, busy: false }));
    return () => {
      live = false;
    };
  }, [wanted]);

  const events = (recent.data && recent.data.events) || [];
  return (
    <>
      <div class="page-head">
        <h1>Event explorer</h1>
        <p class="sub">Where an event is: stored, routed, delivered, retrying or dead-lettered.</p>
      </div>
      <form
        class="card inline-form"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          const id = input.trim();
          if (id) navigate(`/events/${encodeURIComponent(id)}`);
        }}
      >
        <label for="message-id">messageId</label>
        <input
          id="message-id"
          type="search"
          class="mono wide"
          value={input}
          onInput={(e) => setInput(e.currentTarget.value)}
        />
        <button type="submit">Look up</button>
      </form>
      {result.busy && <p role="status">Looking up…</p>}
      {result.error && (
        <p class="error" role="alert">
          {result.error.status === 404 ? `No event with messageId “${wanted}” in the dedup window.` : result.error.message}
        </p>
      )}
      {result.doc && <Path doc={result.doc} />}
      <section class="card" aria-labelledby="recent-h">
        <h2 id="recent-h">Recently accepted</h2>
        {events.length === 0 ? (
          <p class="sub">None yet.</p>
        ) : (
          <div class="table-wrap">
            <table>
              <caption class="visually-hidden">Recently accepted events</caption>
              <thead>
                <tr>
                  <th scope="col">Received</th>
                  <th scope="col">Source</th>
                  <th scope="col">Type</th>
                  <th scope="col">Event</th>
                  <th scope="col">Message ID</th>
                </tr>
              </thead>
              <tbody>
                {events.slice(0, 15).map((e, i) => (
                  <tr key={i}>
                    <td class="mono">{fmtTime(e.receivedAt)}</td>
                    <td>{e.source}</td>
                    <td>{e.event.type}</td>
                    <td>{e.event.event || e.event.name || '–'}</td>
                    <td class="mono">
                      <a href={`/console/events/${encodeURIComponent(e.event.messageId)}`}>{e.event.messageId}</a>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </>
  );
}
