// The Workspace editor (the config generator): sources and destinations of the workspace
// file, edited in forms generated from each destination kind's settings schema
// (GET /admin/catalogue); new write keys from the server; every change validated by the
// server (POST /admin/workspace/validate, the checks of `check-config` and a reload) with
// each problem shown at its field and JSON path; a diff preview, then apply (PUT, written
// atomically and reloaded); export and import of the workspace JSON.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { api } from '../api.js';
import { unifiedDiff } from '../diff.js';
import { SchemaField, SchemaFields, countBelow, fieldId } from '../components/schema-form.jsx';
import { useAction } from '../util.js';

const VALIDATE_AFTER_MS = 600;

const clone = (v) => JSON.parse(JSON.stringify(v));
const randomId = (prefix) =>
  `${prefix}_${Array.from(crypto.getRandomValues(new Uint8Array(5)), (b) => b.toString(36).padStart(2, '0')).join('').slice(0, 8)}`;

/** `{path → [message]}`; "x is a required property" goes to the missing field's path. */
function problemMap(problems) {
  const map = new Map();
  for (const p of problems || []) {
    let path = p.path || '$';
    const m = /^"([^"]+)" is a required property/.exec(p.message);
    if (m && !path.endsWith(`.${m[1]}`)) path = `${path}.${m[1]}`;
    if (!map.has(path)) map.set(path, []);
    map.get(path).push(p.message);
  }
  return map;
}

/** Which item of the workspace a JSON path is in: {s, d} (d null for the source itself). */
function itemOf(path) {
  const m = /^\$\.sources\[(\d+)\](?:\.destinations\[(\d+)\])?/.exec(path);
  return m ? { s: Number(m[1]), d: m[2] === undefined ? null : Number(m[2]) } : null;
}

function findKind(kinds, name) {
  const n = (name || '').toUpperCase();
  return kinds.find((k) => k.name.toUpperCase() === n || (k.aliases || []).some((a) => a.toUpperCase() === n));
}

/** The workspace with destination secrets masked (changed ones marked), for the diff. */
function masked(ws, other, kinds) {
  const out = clone(ws);
  const otherDest = {};
  for (const s of (other && other.sources) || []) for (const d of s.destinations || []) otherDest[d.id] = d;
  for (const s of out.sources || []) {
    for (const d of s.destinations || []) {
      const kind = findKind(kinds, d.destinationDefinition && d.destinationDefinition.name);
      for (const key of (kind && kind.secrets) || []) {
        if (!d.config || d.config[key] === undefined || d.config[key] === '') continue;
        const o = otherDest[d.id];
        const same = o && o.config && JSON.stringify(o.config[key]) === JSON.stringify(d.config[key]);
        d.config[key] = same ? '••••••' : '•••••• (changed)';
      }
    }
  }
  return out;
}

const text = (ws) => JSON.stringify(ws, null, 2);

function Field({ id, label, children, msgs, path, hint }) {
  return (
    <div class={`field ${msgs ? 'invalid' : ''}`}>
      <label for={id}>{label}</label>
      {children}
      {hint && (
        <p class="hint" id={`${id}-hint`}>
          {hint}
        </p>
      )}
      {msgs && (
        <div class="field-error" id={`${id}-err`}>
          {msgs.map((m, i) => (
            <p key={i}>
              {m} <code class="path">{path}</code>
            </p>
          ))}
        </div>
      )}
    </div>
  );
}

/** A plain text input bound to `obj[key]` at `path`. */
function TextInput({ obj, k, path, problems, onChange, label, mono, readOnly, hint }) {
  const id = fieldId(path);
  const msgs = problems.get(path);
  return (
    <Field id={id} label={label} msgs={msgs} path={path} hint={hint}>
      <input
        id={id}
        type="text"
        class={mono ? 'mono' : ''}
        value={obj[k] ?? ''}
        readOnly={readOnly}
        spellcheck={false}
        aria-invalid={msgs ? 'true' : undefined}
        aria-describedby={[hint ? `${id}-hint` : '', msgs ? `${id}-err` : ''].filter(Boolean).join(' ') || undefined}
        onInput={(e) => onChange(e.currentTarget.value)}
      />
    </Field>
  );
}

function Enabled({ value, path, onChange, problems }) {
  const id = fieldId(path);
  return (
    <div class="field check">
      <input id={id} type="checkbox" checked={value !== false} onChange={(e) => onChange(e.currentTarget.checked)} />
      <label for={id}>Enabled</label>
      {problems.get(path) && <p class="field-error">{problems.get(path).join('; ')}</p>}
    </div>
  );
}

function SourceEditor({ src, si, problems, edit, remove, newKey }) {
  const base = `$.sources[${si}]`;
  const set = (k) => (v) => edit((ws) => (ws.sources[si][k] = v));
  return (
    <section class="card" aria-labelledby="editor-h">
      <h2 id="editor-h">Source: {src.name || src.id}</h2>
      <TextInput obj={src} k="name" label="Name" path={`${base}.name`} problems={problems} onChange={set('name')} />
      <TextInput obj={src} k="id" label="ID" mono path={`${base}.id`} problems={problems} onChange={set('id')} />
      <Enabled value={src.enabled} path={`${base}.enabled`} problems={problems} onChange={set('enabled')} />
      <TextInput
        obj={src}
        k="writeKey"
        label="Write key"
        mono
        readOnly
        path={`${base}.writeKey`}
        problems={problems}
        hint="SDKs send it as the user name of HTTP basic auth. Generate a new one to revoke this one."
        onChange={() => {}}
      />
      <div class="actions">
        <button type="button" class="ghost" onClick={newKey}>
          Generate new write key
        </button>
        <button type="button" class="ghost danger-text" onClick={remove}>
          Remove source
        </button>
      </div>
    </section>
  );
}

function DestinationEditor({ dest, si, di, problems, edit, remove, kinds, commonKeys }) {
  const base = `$.sources[${si}].destinations[${di}]`;
  const kindName = (dest.destinationDefinition && dest.destinationDefinition.name) || '';
  const kind = findKind(kinds, kindName);
  const set = (k) => (v) => edit((ws) => (ws.sources[si].destinations[di][k] = v));
  const setConfig = (config) => edit((ws) => (ws.sources[si].destinations[di].config = config));
  const kindId = fieldId(`${base}.destinationDefinition.name`);
  const kindMsgs = problems.get(`${base}.destinationDefinition.name`) || problems.get(`${base}.destinationDefinition`);
  const own = kind ? Object.keys(kind.schema.properties || {}).filter((k) => !commonKeys.includes(k)) : [];
  const extra = kind
    ? Object.keys(dest.config || {}).filter((k) => !(k in (kind.schema.properties || {})))
    : [];
  const transformations = {
    type: 'array',
    title: 'Transformations',
    description: 'User transformations run in order before the mapping; file is absolute or relative to the workspace file.',
    items: {
      type: 'object',
      properties: {
        name: { type: 'string', title: 'Transformation name' },
        file: { type: 'string', title: 'File' },
      },
    },
  };
  return (
    <section class="card" aria-labelledby="editor-h">
      <h2 id="editor-h">Destination: {dest.name || dest.id}</h2>
      <TextInput obj={dest} k="name" label="Name" path={`${base}.name`} problems={problems} onChange={set('name')} />
      <TextInput obj={dest} k="id" label="ID" mono path={`${base}.id`} problems={problems} onChange={set('id')} />
      <Enabled value={dest.enabled} path={`${base}.enabled`} problems={problems} onChange={set('enabled')} />
      <Field id={kindId} label="Kind" msgs={kindMsgs} path={`${base}.destinationDefinition.name`}>
        <select
          id={kindId}
          value={kind ? kind.name : kindName}
          aria-invalid={kindMsgs ? 'true' : undefined}
          onChange={(e) => {
            const k = findKind(kinds, e.currentTarget.value);
            edit((ws) => {
              const d = ws.sources[si].destinations[di];
              d.destinationDefinition = { name: k.name, displayName: k.title };
              d.config = {};
            });
          }}
        >
          {!kind && <option value={kindName}>{kindName || '(none)'} — unknown kind</option>}
          {kinds.map((k) => (
            <option key={k.name} value={k.name}>
              {k.title} ({k.name})
            </option>
          ))}
        </select>
        {kind && kind.description && <p class="hint">{kind.description}</p>}
      </Field>
      {kind ? (
        <>
          <fieldset class="group">
            <legend>{kind.title} settings</legend>
            <SchemaFields
              schema={kind.schema}
              only={own}
              value={dest.config || {}}
              onChange={setConfig}
              path={`${base}.config`}
              problems={problems}
            />
          </fieldset>
          <details class="group" open={countBelow(problems, `${base}.config`) > 0 && own.length === 0}>
            <summary>Settings of every destination (event filters, throttling, connection mode)</summary>
            <SchemaFields
              schema={kind.schema}
              only={commonKeys}
              value={dest.config || {}}
              onChange={setConfig}
              path={`${base}.config`}
              problems={problems}
            />
          </details>
          {extra.length > 0 && (
            <p class="hint">
              Also set, kept as they are: {extra.map((k) => <code key={k}>{k} </code>)}
            </p>
          )}
        </>
      ) : (
        <SchemaField
          name="config"
          schema={{ title: 'Settings' }}
          value={dest.config}
          onChange={setConfig}
          path={`${base}.config`}
          problems={problems}
        />
      )}
      {problems.get(`${base}.config`) && (
        <div class="field-error">
          {problems.get(`${base}.config`).map((m, i) => (
            <p key={i}>
              {m} <code class="path">{`${base}.config`}</code>
            </p>
          ))}
        </div>
      )}
      <SchemaField
        name="transformations"
        schema={transformations}
        value={dest.transformations}
        onChange={(v) => edit((ws) => {
          const d = ws.sources[si].destinations[di];
          if (v === undefined) delete d.transformations;
          else d.transformations = v;
        })}
        path={`${base}.transformations`}
        problems={problems}
      />
      <div class="actions">
        <button type="button" class="ghost danger-text" onClick={remove}>
          Remove destination
        </button>
      </div>
    </section>
  );
}

export function Workspace() {
  const [loaded, setLoaded] = useState(null);
  const [kinds, setKinds] = useState([]);
  const [ws, setWs] = useState(null);
  const [original, setOriginal] = useState(null);
  const [sel, setSel] = useState({ s: 0, d: null });
  const [problems, setProblems] = useState([]);
  const [checked, setChecked] = useState(null);
  const [review, setReview] = useState(false);
  const [apply, runApply, setApply] = useAction();
  const [note, setNote] = useState(null);
  const [loadError, setLoadError] = useState(null);
  const version = useRef(0);
  const focusAfter = useRef(null);

  useEffect(() => {
    Promise.all([api('/admin/workspace'), api('/admin/catalogue')])
      .then(([w, c]) => {
        setLoaded(w);
        setKinds(c.kinds);
        setWs(w.workspace);
        setOriginal(w.workspace);
      })
      .catch((e) => e.status !== 401 && setLoadError(e));
  }, []);

  // Validate a while after the last change.
  useEffect(() => {
    if (!ws) return;
    const v = ++version.current;
    const t = setTimeout(async () => {
      try {
        const r = await api('/admin/workspace/validate', { method: 'POST', body: ws });
        if (v === version.current) {
          setProblems(r.problems);
          setChecked(r.valid);
        }
      } catch (e) {
        if (v === version.current && e.status !== 401) {
          setProblems([{ path: '$', message: e.message }]);
          setChecked(false);
        }
      }
    }, VALIDATE_AFTER_MS);
    return () => clearTimeout(t);
  }, [ws]);

  useEffect(() => {
    if (focusAfter.current) {
      const el = document.getElementById(focusAfter.current);
      focusAfter.current = null;
      if (el) el.focus();
    }
  });

  const commonKeys = useMemo(() => {
    if (kinds.length < 2) return [];
    const sets = kinds.map((k) => new Set(Object.keys(k.schema.properties || {})));
    return Object.keys(kinds[0].schema.properties || {}).filter((k) => sets.every((s) => s.has(k)));
  }, [kinds]);
  const pmap = useMemo(() => problemMap(problems), [problems]);

  if (loadError) {
    return (
      <>
        <h1>Workspace</h1>
        <p class="error" role="alert">
          Cannot load the workspace: {loadError.message}
        </p>
      </>
    );
  }
  if (!ws) {
    return (
      <>
        <h1>Workspace</h1>
        <p role="status">Loading…</p>
      </>
    );
  }

  const edit = (fn) => {
    const next = clone(ws);
    next.sources = next.sources || [];
    fn(next);
    setWs(next);
    setChecked(null);
    setReview(false);
    setApply({ busy: false, result: null, error: null });
  };
  const sources = ws.sources || [];
  const src = sources[sel.s];
  const dest = src && sel.d !== null ? (src.destinations || [])[sel.d] : null;

  const addSource = async () => {
    const { writeKey } = await api('/admin/workspace/write-key', { method: 'POST' });
    const s = sources.length;
    edit((w) => w.sources.push({ id: randomId('src'), name: 'New source', writeKey, enabled: true, destinations: [] }));
    setSel({ s, d: null });
    focusAfter.current = fieldId(`$.sources[${s}].name`);
  };
  const addDestination = (si) => {
    const d = (sources[si].destinations || []).length;
    const kind = findKind(kinds, 'WEBHOOK') || kinds[0];
    edit((w) => {
      w.sources[si].destinations = w.sources[si].destinations || [];
      w.sources[si].destinations.push({
        id: randomId('dst'),
        name: 'New destination',
        enabled: true,
        config: {},
        destinationDefinition: { name: kind.name, displayName: kind.title },
      });
    });
    setSel({ s: si, d });
    focusAfter.current = fieldId(`$.sources[${si}].destinations[${d}].name`);
  };
  const newKey = async () => {
    const { writeKey } = await api('/admin/workspace/write-key', { method: 'POST' });
    edit((w) => (w.sources[sel.s].writeKey = writeKey));
    setNote('A new write key was generated; apply to make it the source’s key.');
  };
  const show = (path) => {
    const item = itemOf(path);
    if (item) setSel(item);
    focusAfter.current = fieldId(path);
  };
  const exportJson = () => {
    const url = URL.createObjectURL(new Blob([text(ws) + '\n'], { type: 'application/json' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = 'workspace.json';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };
  const importJson = async (e) => {
    const file = e.currentTarget.files[0];
    e.currentTarget.value = '';
    if (!file) return;
    try {
      const parsed = JSON.parse(await file.text());
      if (!parsed || typeof parsed !== 'object' || !Array.isArray(parsed.sources)) {
        throw new Error('it has no "sources" array');
      }
      edit((w) => {
        for (const k of Object.keys(w)) delete w[k];
        Object.assign(w, parsed);
      });
      setSel({ s: 0, d: null });
      setNote(`Imported ${file.name}: review the changes, then apply.`);
    } catch (err) {
      setNote(`Cannot import ${file.name}: ${err.message}`);
    }
  };
  const doApply = async () => {
    const r = await runApply(() => api('/admin/workspace', { method: 'PUT', body: ws }));
    if (r) {
      setOriginal(ws);
      setReview(false);
      setProblems([]);
    } else {
      setReview(false);
    }
  };
  // After a refused apply, its problems are the ones to show.
  const shownProblems =
    apply.error && apply.error.body && apply.error.body.problems ? problemMap(apply.error.body.problems) : pmap;
  const problemList = [...shownProblems].flatMap(([path, msgs]) => msgs.map((m) => ({ path, message: m })));
  const diff = review ? unifiedDiff(text(masked(original, ws, kinds)), text(masked(ws, original, kinds))) : [];
  const changed = text(ws) !== text(original);

  return (
    <>
      <div class="page-head">
        <h1>Workspace</h1>
        <p class="sub">
          <code>{loaded.path}</code>: edit, review the changes, apply (written atomically, then reloaded).
        </p>
      </div>
      <div class="toolbar card">
        <button type="button" onClick={() => setReview(true)} disabled={!changed}>
          Review changes
        </button>
        <button type="button" class="ghost" onClick={exportJson}>
          Export JSON
        </button>
        <input id="import-file" type="file" accept="application/json,.json" class="visually-hidden" onChange={importJson} />
        <label class="button ghost" for="import-file">
          Import JSON
        </label>
        <button
          type="button"
          class="ghost"
          disabled={!changed}
          onClick={() => {
            setWs(original);
            setReview(false);
          }}
        >
          Discard changes
        </button>
        <p class="sub" role="status">
          {changed ? 'Unsaved changes. ' : 'No changes. '}
          {checked === null ? 'Checking…' : checked ? 'Valid.' : `${problemList.length} problem${problemList.length === 1 ? '' : 's'}.`}
        </p>
      </div>
      {note && (
        <p class="notice" role="status">
          {note}
        </p>
      )}
      <div role="status" class="result">
        {apply.busy && 'Applying…'}
        {apply.result && <ApplyReport report={apply.result} />}
      </div>
      {apply.error && (
        <p class="error" role="alert">
          Not applied: {apply.error.message}
        </p>
      )}
      {problemList.length > 0 && (
        <section class="card problems" aria-labelledby="problems-h">
          <h2 id="problems-h">Problems</h2>
          <ul>
            {problemList.map((p, i) => (
              <li key={i}>
                <button type="button" class="link" onClick={() => show(p.path)}>
                  <code>{p.path}</code>
                </button>
                : {p.message}
              </li>
            ))}
          </ul>
        </section>
      )}
      {review && (
        <section class="card" aria-labelledby="diff-h">
          <h2 id="diff-h">Changes to {loaded.path}</h2>
          {diff.length === 0 ? (
            <p>No changes.</p>
          ) : (
            <pre class="diff" aria-label="Differences, removed lines start with -, added lines with +">
              {diff.map((l, i) => (
                <span key={i} class={`l-${l.op === '+' ? 'add' : l.op === '-' ? 'del' : l.op === '@' ? 'hunk' : 'ctx'}`}>
                  {l.op === '@' ? l.text : `${l.op} ${l.text}`}
                  {'\n'}
                </span>
              ))}
            </pre>
          )}
          <p class="hint">Secret settings are masked here.</p>
          <div class="actions">
            <button type="button" onClick={doApply} disabled={apply.busy || diff.length === 0}>
              Apply
            </button>
            <button type="button" class="ghost" onClick={() => setReview(false)}>
              Back to editing
            </button>
          </div>
        </section>
      )}
      <div class="editor-grid">
        <nav class="card tree" aria-label="Sources and destinations">
          <ul>
            {sources.map((s, si) => {
              const n = countBelow(shownProblems, `$.sources[${si}]`);
              return (
                <li key={si}>
                  <button
                    type="button"
                    class={`item ${sel.s === si && sel.d === null ? 'selected' : ''}`}
                    aria-current={sel.s === si && sel.d === null ? 'true' : undefined}
                    onClick={() => setSel({ s: si, d: null })}
                  >
                    {s.name || s.id}
                    {s.enabled === false && <span class="badge off">disabled</span>}
                    {n > 0 && <span class="badge bad">{n} problem{n === 1 ? '' : 's'}</span>}
                  </button>
                  <ul>
                    {(s.destinations || []).map((d, di) => {
                      const dn = countBelow(shownProblems, `$.sources[${si}].destinations[${di}]`);
                      const on = sel.s === si && sel.d === di;
                      return (
                        <li key={di}>
                          <button
                            type="button"
                            class={`item ${on ? 'selected' : ''}`}
                            aria-current={on ? 'true' : undefined}
                            onClick={() => setSel({ s: si, d: di })}
                          >
                            {d.name || d.id}
                            <span class="sub"> {d.destinationDefinition && d.destinationDefinition.name}</span>
                            {d.enabled === false && <span class="badge off">disabled</span>}
                            {dn > 0 && <span class="badge bad">{dn}</span>}
                          </button>
                        </li>
                      );
                    })}
                    <li>
                      <button type="button" class="ghost small" onClick={() => addDestination(si)}>
                        Add destination to {s.name || s.id}
                      </button>
                    </li>
                  </ul>
                </li>
              );
            })}
          </ul>
          <button type="button" class="ghost small" onClick={addSource}>
            Add source
          </button>
        </nav>
        <div>
          {dest ? (
            <DestinationEditor
              key={`${sel.s}-${sel.d}`}
              dest={dest}
              si={sel.s}
              di={sel.d}
              problems={shownProblems}
              kinds={kinds}
              commonKeys={commonKeys}
              edit={edit}
              remove={() => {
                edit((w) => w.sources[sel.s].destinations.splice(sel.d, 1));
                setSel({ s: sel.s, d: null });
              }}
            />
          ) : src ? (
            <SourceEditor
              key={sel.s}
              src={src}
              si={sel.s}
              problems={shownProblems}
              edit={edit}
              newKey={newKey}
              remove={() => {
                edit((w) => w.sources.splice(sel.s, 1));
                setSel({ s: 0, d: null });
              }}
            />
          ) : (
            <p>The workspace has no sources yet. Add one.</p>
          )}
        </div>
      </div>
    </>
  );
}

function ApplyReport({ report }) {
  const c = report.changes || {};
  const list = (xs) => (xs && xs.length ? xs.join(', ') : 'none');
  return (
    <p class="ok-text">
      Applied and reloaded. Started: {list(c.started)}; stopped: {list(c.stopped)}.
    </p>
  );
}
