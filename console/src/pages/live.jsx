// The Live events page: events as the gateway accepts them and each destination's answer,
// streamed from GET /admin/live, filtered by source, destination, type, event name and
// userId. Pausing stops rendering (arrivals are kept, bounded, and shown on resume); the
// page keeps at most MAX_ROWS rows; a drop by the server is shown with a reconnect button.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from '../api.js';
import { openLive } from '../live-stream.js';
import { fmtTime, pretty } from '../util.js';

const MAX_ROWS = 300;
const FLUSH_MS = 200;
const TYPES = ['track', 'identify', 'page', 'screen', 'group', 'alias'];
const EMPTY = { source: '', destination: '', type: '', event: '', userId: '' };

let seq = 0;
// messageId → what the accepted event said (answers carry only messageId and key), bounded.
const origins = new Map();
const ORIGINS = 5000;

function toRow(type, d) {
  seq += 1;
  if (type === 'accepted') {
    origins.set(d.messageId, { source: d.source, type: d.type, name: d.name, userId: d.userId || d.anonymousId });
    if (origins.size > ORIGINS) origins.delete(origins.keys().next().value);
    return {
      key: seq,
      kind: 'accepted',
      at: d.receivedAt,
      source: d.source,
      destination: '',
      type: d.type,
      name: d.name,
      userId: d.userId || d.anonymousId,
      messageId: d.messageId,
      event: d.event,
    };
  }
  const o = origins.get(d.messageId) || {};
  return {
    key: seq,
    kind: d.outcome,
    at: d.at,
    source: o.source || '',
    destination: d.destination,
    type: o.type || '',
    name: o.name,
    userId: o.userId || d.key,
    messageId: d.messageId,
    detail: [d.status ? `HTTP ${d.status}` : '', d.attempts > 1 ? `attempt ${d.attempts}` : '', d.error || '']
      .filter(Boolean)
      .join(' · '),
  };
}

const BADGE = { accepted: 'info', delivered: 'ok', retrying: 'warn', dead_lettered: 'bad' };

function Row({ r }) {
  return (
    <tr data-kind={r.kind} data-message-id={r.messageId}>
      <td class="mono">{fmtTime(r.at)}</td>
      <td>
        <span class={`badge ${BADGE[r.kind] || 'info'}`}>{r.kind.replace('_', ' ')}</span>
      </td>
      <td>{r.source}</td>
      <td>{r.destination || '–'}</td>
      <td>{r.type}</td>
      <td>{r.name || '–'}</td>
      <td class="mono">{r.userId || '–'}</td>
      <td class="mono">
        {r.messageId ? <a href={`/console/events/${encodeURIComponent(r.messageId)}`}>{r.messageId}</a> : '–'}
      </td>
      <td>
        {r.event ? (
          <details>
            <summary>event</summary>
            <pre>{pretty(r.event)}</pre>
          </details>
        ) : (
          r.detail || ''
        )}
      </td>
    </tr>
  );
}

export function Live() {
  const [form, setForm] = useState(EMPTY);
  const [filters, setFilters] = useState(EMPTY);
  const [conn, setConn] = useState(0);
  const [status, setStatus] = useState({ state: 'connecting' });
  const [stats, setStats] = useState(null);
  const [rows, setRows] = useState([]);
  const [paused, setPaused] = useState(false);
  const [held, setHeld] = useState(0);
  const [names, setNames] = useState({ sources: [], destinations: [] });
  const incoming = useRef([]);
  const pausedRef = useRef(false);
  const opened = useRef(0); // streams opened so far (tests wait for a new one)
  const generation = useRef(0); // frames of an older stream are ignored

  useEffect(() => {
    api('/admin/connections')
      .then((c) =>
        setNames({
          sources: c.sources.map((s) => s.id),
          destinations: c.sources.flatMap((s) => s.destinations.map((d) => d.id)),
        }),
      )
      .catch(() => {});
  }, []);

  useEffect(() => {
    const mine = ++generation.current;
    incoming.current = [];
    setStatus({ state: 'connecting' });
    const live = openLive(filters, {
      onOpen: () => {
        if (generation.current !== mine) return;
        opened.current += 1;
        setStatus({ state: 'live' });
      },
      onFrame: (type, data) => {
        if (generation.current !== mine) return;
        if (type === 'stats') setStats(data);
        else if (type === 'accepted' || type === 'answered') {
          incoming.current.unshift(toRow(type, data));
          if (incoming.current.length > MAX_ROWS) incoming.current.length = MAX_ROWS;
        }
      },
      onEnd: (info) => generation.current === mine && setStatus({ state: 'ended', ...info }),
    });
    return () => live.close();
  }, [filters, conn]);

  useEffect(() => {
    const t = setInterval(() => {
      if (!incoming.current.length) return;
      if (pausedRef.current) {
        setHeld(incoming.current.length);
        return;
      }
      const fresh = incoming.current;
      incoming.current = [];
      setRows((old) => fresh.concat(old).slice(0, MAX_ROWS));
    }, FLUSH_MS);
    return () => clearInterval(t);
  }, []);

  // New filters: a new stream and an empty table (nothing of the old stream shows after).
  const restart = (next) => {
    generation.current += 1;
    incoming.current = [];
    setRows([]);
    setHeld(0);
    setFilters(next);
  };
  const togglePause = () => {
    pausedRef.current = !paused;
    setPaused(!paused);
    setHeld(0);
  };
  const field = (k) => ({
    id: `live-${k}`,
    value: form[k],
    onInput: (e) => setForm({ ...form, [k]: e.currentTarget.value }),
  });
  const stateText =
    status.state === 'live'
      ? paused
        ? `Paused${held ? `: ${held} new messages held` : ''}`
        : 'Live'
      : status.state === 'connecting'
        ? 'Connecting…'
        : status.reason
          ? `Dropped by the server: ${status.reason}`
          : `Disconnected: ${status.error || 'the stream ended'}`;

  return (
    <>
      <div class="page-head">
        <h1>Live events</h1>
        <p class="sub">
          Events as Keel accepts them and each destination's answer. Write keys are never shown; a
          browser that cannot keep up is disconnected rather than slowing ingestion.
        </p>
      </div>
      <form
        class="filters card"
        aria-label="Filters"
        onSubmit={(e) => {
          e.preventDefault();
          restart({ ...form });
        }}
      >
        <div class="field">
          <label for="live-source">Source</label>
          <select {...field('source')}>
            <option value="">any</option>
            {names.sources.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="live-destination">Destination</label>
          <select {...field('destination')}>
            <option value="">any</option>
            {names.destinations.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="live-type">Type</label>
          <select {...field('type')}>
            <option value="">any</option>
            {TYPES.map((t) => (
              <option key={t}>{t}</option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="live-event">Event name</label>
          <input type="text" {...field('event')} />
        </div>
        <div class="field">
          <label for="live-userId">userId</label>
          <input type="text" {...field('userId')} />
        </div>
        <div class="actions">
          <button type="submit">Apply filters</button>
          <button
            type="button"
            class="ghost"
            onClick={() => {
              setForm(EMPTY);
              restart(EMPTY);
            }}
          >
            Reset
          </button>
        </div>
      </form>
      <div class="toolbar">
        <p class={`status-line state-${status.state}`} role="status" id="live-state" data-opened={opened.current}>
          {stateText}
        </p>
        {stats && status.state === 'live' && (
          <p class="sub" id="live-stats">
            {stats.shown} shown, {stats.skipped} skipped (at most {stats.max_rate}/s)
          </p>
        )}
        <button type="button" onClick={togglePause}>
          {paused ? 'Resume' : 'Pause'}
        </button>
        <button type="button" class="ghost" onClick={() => setRows([])}>
          Clear
        </button>
        {status.state === 'ended' && (
          <button type="button" onClick={() => setConn((c) => c + 1)}>
            Reconnect
          </button>
        )}
      </div>
      <div class="table-wrap scroll" tabIndex={0} role="region" aria-label="Live events, newest first">
        <table class="live">
          <caption class="visually-hidden">Live events, newest first (at most {MAX_ROWS})</caption>
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">What</th>
              <th scope="col">Source</th>
              <th scope="col">Destination</th>
              <th scope="col">Type</th>
              <th scope="col">Event</th>
              <th scope="col">User</th>
              <th scope="col">Message ID</th>
              <th scope="col">Detail</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <Row key={r.key} r={r} />
            ))}
          </tbody>
        </table>
        {rows.length === 0 && <p class="sub empty">No events yet{paused ? ' (paused)' : ''}.</p>}
      </div>
    </>
  );
}
