// The Dead letters page: dead-lettered jobs per destination (GET /admin/dlq) with reason,
// last response and payload; replays the selected ones, or all of the destination (or of
// every destination), after a confirmation (POST /admin/dlq/replay), and shows the result.
import { useState } from 'preact/hooks';
import { api } from '../api.js';
import { Confirm } from '../components/confirm.jsx';
import { fmtDateTime, pretty, useAction, useLoad } from '../util.js';

const LIMIT = 200;

export function DeadLetters() {
  const [destination, setDestination] = useState(
    new URLSearchParams(location.search).get('destination') || '',
  );
  const [selected, setSelected] = useState(new Set());
  const [confirm, setConfirm] = useState(null);
  const [replay, runReplay] = useAction();
  const names = useLoad(() => api('/admin/connections'), []);
  const list = useLoad(
    () =>
      api(`/admin/dlq?limit=${LIMIT}${destination ? `&destination=${encodeURIComponent(destination)}` : ''}`),
    [destination],
  );
  const jobs = (list.data && list.data.jobs) || [];
  const destinations = names.data ? names.data.sources.flatMap((s) => s.destinations) : [];

  const choose = (value) => {
    setDestination(value);
    setSelected(new Set());
    history.replaceState(null, '', value ? `?destination=${encodeURIComponent(value)}` : location.pathname);
  };
  const toggle = (id) => {
    const next = new Set(selected);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setSelected(next);
  };
  const allChecked = jobs.length > 0 && jobs.every((j) => selected.has(j.id));
  const ask = (what) => {
    const n = what === 'selected' ? selected.size : jobs.length;
    const scope = destination ? `of ${destination}` : 'of every destination';
    setConfirm({
      what,
      title: what === 'selected' ? `Replay ${n} selected dead letter${n === 1 ? '' : 's'}?` : `Replay all dead letters ${scope}?`,
      body:
        what === 'selected'
          ? 'They go back to their destinations for delivery, in order per user.'
          : `Every dead letter ${scope}${jobs.length >= LIMIT ? ' (more than are listed here)' : ''} goes back for delivery, in order per user.`,
    });
  };
  const doReplay = async () => {
    const what = confirm.what;
    setConfirm(null);
    const body =
      what === 'selected' ? { ids: [...selected] } : destination ? { destination } : { all: true };
    const r = await runReplay(() => api('/admin/dlq/replay', { method: 'POST', body }));
    if (r) {
      setSelected(new Set());
      list.reload();
      names.reload();
    }
  };

  return (
    <>
      <div class="page-head">
        <h1>Dead letters</h1>
        <p class="sub">Jobs a destination refused or that ran out of retries. Replay sends them again.</p>
      </div>
      <div class="toolbar card">
        <div class="field">
          <label for="dlq-destination">Destination</label>
          <select id="dlq-destination" value={destination} onChange={(e) => choose(e.currentTarget.value)}>
            <option value="">all destinations</option>
            {destinations.map((d) => (
              <option key={d.id} value={d.id}>
                {d.name} ({d.id}) – {d.dlq}
              </option>
            ))}
            {destination && !destinations.some((d) => d.id === destination) && (
              <option value={destination}>{destination}</option>
            )}
          </select>
        </div>
        <button type="button" class="ghost" onClick={list.reload}>
          Refresh
        </button>
        <button type="button" disabled={selected.size === 0 || replay.busy} onClick={() => ask('selected')}>
          Replay selected ({selected.size})
        </button>
        <button type="button" disabled={jobs.length === 0 || replay.busy} onClick={() => ask('all')}>
          Replay all
        </button>
      </div>
      <div role="status" class="result">
        {replay.busy && 'Replaying…'}
        {replay.result &&
          `Replayed ${replay.result.replayed} dead letter${replay.result.replayed === 1 ? '' : 's'}: ${replay.result.redelivered} sent for delivery again, ${replay.result.retransformed} through the scripts again.`}
      </div>
      {replay.error && (
        <p class="error" role="alert">
          Replay failed: {replay.error.message}
        </p>
      )}
      {list.error && (
        <p class="error" role="alert">
          Cannot list dead letters: {list.error.message}
        </p>
      )}
      {list.data && jobs.length === 0 && <p>No dead letters{destination ? ` for ${destination}` : ''}.</p>}
      {jobs.length > 0 && (
        <div class="table-wrap scroll" tabIndex={0} role="region" aria-label="Dead letters">
          <table>
            <caption class="visually-hidden">Dead letters</caption>
            <thead>
              <tr>
                <th scope="col">
                  <input
                    type="checkbox"
                    aria-label="Select all listed"
                    checked={allChecked}
                    onChange={() => setSelected(allChecked ? new Set() : new Set(jobs.map((j) => j.id)))}
                  />
                </th>
                <th scope="col">Destination</th>
                <th scope="col">Message ID</th>
                <th scope="col" class="num">Attempts</th>
                <th scope="col">Reason</th>
                <th scope="col">Last response</th>
                <th scope="col">Failed</th>
                <th scope="col">Payload</th>
              </tr>
            </thead>
            <tbody>
              {jobs.map((j) => (
                <tr key={j.id} data-message-id={j.message_id}>
                  <td>
                    <input
                      type="checkbox"
                      aria-label={`Select dead letter ${j.id} (${j.message_id})`}
                      checked={selected.has(j.id)}
                      onChange={() => toggle(j.id)}
                    />
                  </td>
                  <td>{j.destination_id}</td>
                  <td class="mono">
                    <a href={`/console/events/${encodeURIComponent(j.message_id)}`}>{j.message_id}</a>
                  </td>
                  <td class="num">{j.attempts}</td>
                  <td class="wrap">
                    {j.stage === 'transform' && <span class="badge warn">script</span>} {j.reason}
                  </td>
                  <td class="wrap">
                    {j.last_status ? `HTTP ${j.last_status} ` : ''}
                    {j.last_response && <code class="clip" title={j.last_response}>{j.last_response}</code>}
                  </td>
                  <td>{fmtDateTime(j.failed_at)}</td>
                  <td>
                    <details>
                      <summary>payload</summary>
                      <pre>{pretty(j.payload)}</pre>
                    </details>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Confirm
        open={!!confirm}
        title={confirm ? confirm.title : ''}
        confirmLabel="Replay"
        onConfirm={doReplay}
        onCancel={() => setConfirm(null)}
      >
        <p>{confirm && confirm.body}</p>
      </Confirm>
    </>
  );
}
