// The Connections page: each source with its destinations — enabled state, delivered/s and
// error rate (from two readings of the counters), pending jobs, DLQ size, circuit state and
// last error — from GET /admin/connections (the numbers of /metrics), every 2 seconds.
import { useRef } from 'preact/hooks';
import { api } from '../api.js';
import { fmtInt, fmtPercent, fmtRate, fmtTime, useLoad } from '../util.js';

const REFRESH_MS = 2000;

/** Rates per destination id from the previous and this reading. */
function rates(prev, cur) {
  const out = {};
  if (!prev) return out;
  const dt = (new Date(cur.at) - new Date(prev.at)) / 1000;
  if (!(dt > 0)) return out;
  const before = {};
  for (const s of prev.sources) for (const d of s.destinations) before[d.id] = d;
  for (const s of cur.sources) {
    for (const d of s.destinations) {
      const b = before[d.id];
      if (!b) continue;
      const delivered =
        d.delivered_total - b.delivered_total + (d.warehouse_loaded_total - b.warehouse_loaded_total);
      const failed = d.retried_total - b.retried_total + (d.dead_lettered_total - b.dead_lettered_total);
      out[d.id] = {
        perSecond: Math.max(0, delivered) / dt,
        errorRate: delivered + failed > 0 ? failed / (delivered + failed) : null,
      };
    }
  }
  return out;
}

function Destination({ d, rate }) {
  const e = d.last_error;
  return (
    <tr class={d.enabled ? '' : 'muted'}>
      <th scope="row">
        {d.name}
        <div class="sub">{d.id}</div>
      </th>
      <td>{d.kind}</td>
      <td>
        <span class={`badge ${d.enabled ? 'ok' : 'off'}`}>{d.enabled ? 'enabled' : 'disabled'}</span>
      </td>
      <td class="num">{rate ? fmtRate(rate.perSecond) : '–'}</td>
      <td class="num">{rate ? fmtPercent(rate.errorRate) : '–'}</td>
      <td class="num">{fmtInt(d.pending)}</td>
      <td class="num">
        {d.dlq > 0 ? (
          <a href={`/console/dead-letters?destination=${encodeURIComponent(d.id)}`}>{fmtInt(d.dlq)}</a>
        ) : (
          fmtInt(d.dlq)
        )}
      </td>
      <td>
        <span class={`badge ${d.circuit === 'open' ? 'bad' : 'ok'}`}>{d.circuit}</span>
      </td>
      <td class="last-error">
        {e ? (
          <>
            <span>{e.error}</span>
            <div class="sub">
              {e.status ? `HTTP ${e.status} · ` : ''}
              {fmtTime(e.at)}
            </div>
          </>
        ) : (
          <span class="sub">none</span>
        )}
      </td>
    </tr>
  );
}

export function Connections() {
  const prev = useRef(null);
  const shown = useRef({});
  const { data, error } = useLoad(
    async () => {
      const cur = await api('/admin/connections');
      const r = rates(prev.current, cur);
      if (Object.keys(r).length) shown.current = r;
      prev.current = cur;
      return cur;
    },
    [],
    REFRESH_MS,
  );
  return (
    <>
      <div class="page-head">
        <h1>Connections</h1>
        <p class="sub">
          {data ? `Updated ${fmtTime(data.at)}, every 2 s.` : 'Loading…'} Rates are over the last
          reading; the numbers are those of <code>/metrics</code> and <code>keel status</code>.
        </p>
      </div>
      {error && (
        <p class="error" role="alert">
          Cannot load connections: {error.message}
        </p>
      )}
      {data && data.sources.length === 0 && <p>The workspace has no sources.</p>}
      {data &&
        data.sources.map((s) => (
          <section class="card" key={s.id} aria-labelledby={`src-${s.id}`}>
            <h2 id={`src-${s.id}`}>
              {s.name} <span class="sub">{s.id}</span>{' '}
              <span class={`badge ${s.enabled ? 'ok' : 'off'}`}>{s.enabled ? 'enabled' : 'disabled'}</span>
            </h2>
            {s.destinations.length === 0 ? (
              <p class="sub">No destinations.</p>
            ) : (
              <div class="table-wrap">
                <table class="connections">
                  <caption class="visually-hidden">Destinations of {s.name}</caption>
                  <thead>
                    <tr>
                      <th scope="col">Destination</th>
                      <th scope="col">Kind</th>
                      <th scope="col">State</th>
                      <th scope="col" class="num">Delivered/s</th>
                      <th scope="col" class="num">Error rate</th>
                      <th scope="col" class="num">Pending</th>
                      <th scope="col" class="num">DLQ</th>
                      <th scope="col">Circuit</th>
                      <th scope="col">Last error</th>
                    </tr>
                  </thead>
                  <tbody>
                    {s.destinations.map((d) => (
                      <Destination key={d.id} d={d} rate={shown.current[d.id]} />
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </section>
        ))}
    </>
  );
}
