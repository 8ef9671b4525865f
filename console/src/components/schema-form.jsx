// Form fields generated from a destination kind's settings schema (JSON Schema 2020-12 from
// GET /admin/catalogue — the same schemas `check-config` validates with): strings (write-only
// ones as password inputs), numbers, booleans, enums, nested objects, arrays of objects as
// repeatable rows, arrays of strings, and a JSON box for anything else. Each field knows its
// JSON path ($.sources[0].destinations[1].config.webhookUrl) and shows the server's
// problems for that path beside it.
import { useEffect, useState } from 'preact/hooks';

/** The DOM id of the field at a JSON path. */
export const fieldId = (path) => `f${path.replace(/[^A-Za-z0-9_]+/g, '-')}`;

const typesOf = (s) => (Array.isArray(s.type) ? s.type : s.type ? [s.type] : []).filter((t) => t !== 'null');

/** The string variant of an `anyOf` (e.g. `fields`: a dotted path or {field}). */
const stringVariant = (s) => (s && s.anyOf ? s.anyOf.find((v) => typesOf(v).includes('string')) : null);

function kindOf(s) {
  if (!s || typeof s !== 'object') return 'json';
  if (Array.isArray(s.enum)) return 'enum';
  const t = typesOf(s);
  if (t.includes('array')) {
    const items = s.items || {};
    if (typesOf(items).includes('object') && items.properties) return 'rows';
    if (typesOf(items).includes('string') || stringVariant(items)) return 'strings';
    return 'json';
  }
  if (t.includes('object')) return s.properties ? 'object' : 'json';
  if (t.length === 1 && t[0] === 'boolean') return 'boolean';
  if (t.includes('integer') || t.includes('number')) return 'number';
  if (t.includes('string')) return 'string';
  return 'json';
}

/** Problems (messages) at exactly `path`. */
const at = (problems, path) => problems.get(path) || null;

/** Problems at `path` or below it. */
export function countBelow(problems, path) {
  let n = 0;
  for (const [p, msgs] of problems) {
    if (p === path || p.startsWith(path + '.') || p.startsWith(path + '[')) n += msgs.length;
  }
  return n;
}

function Messages({ id, path, msgs }) {
  if (!msgs) return null;
  return (
    <div class="field-error" id={id}>
      {msgs.map((m, i) => (
        <p key={i}>
          {m} <code class="path">{path}</code>
        </p>
      ))}
    </div>
  );
}

function Label({ id, title, required }) {
  return (
    <label for={id}>
      {title}
      {required && <span class="req"> (required)</span>}
    </label>
  );
}

const describedBy = (id, hint, msgs) =>
  [hint ? `${id}-hint` : '', msgs ? `${id}-err` : ''].filter(Boolean).join(' ') || undefined;

function Hint({ id, text }) {
  return text ? (
    <p class="hint" id={`${id}-hint`}>
      {text}
    </p>
  ) : null;
}

/** A number typed as text: a number when it reads as one, else the text (the server says why). */
function parseNumber(text) {
  const t = text.trim();
  if (t === '') return undefined;
  return /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t) ? Number(t) : text;
}

function JsonBox({ id, value, onChange, msgs, hint, title, required, path }) {
  const [text, setText] = useState(value === undefined ? '' : JSON.stringify(value, null, 2));
  const [bad, setBad] = useState(null);
  useEffect(() => {
    setText(value === undefined ? '' : JSON.stringify(value, null, 2));
  }, [JSON.stringify(value)]);
  return (
    <div class={`field ${msgs || bad ? 'invalid' : ''}`}>
      <Label id={id} title={`${title} (JSON)`} required={required} />
      <textarea
        id={id}
        class="code"
        rows={3}
        value={text}
        spellcheck={false}
        aria-invalid={msgs || bad ? 'true' : undefined}
        aria-describedby={describedBy(id, hint, msgs || bad)}
        onInput={(e) => setText(e.currentTarget.value)}
        onBlur={() => {
          if (text.trim() === '') {
            setBad(null);
            onChange(undefined);
            return;
          }
          try {
            onChange(JSON.parse(text));
            setBad(null);
          } catch (e) {
            setBad([`not JSON: ${e.message}`]);
          }
        }}
      />
      <Hint id={id} text={hint} />
      <Messages id={`${id}-err`} path={path} msgs={msgs || bad} />
    </div>
  );
}

/** One setting. */
export function SchemaField({ name, schema, value, onChange, path, problems, required }) {
  const id = fieldId(path);
  const title = schema.title || name;
  const hint = schema.description;
  const msgs = at(problems, path);
  const kind = kindOf(schema);
  const invalid = msgs ? 'true' : undefined;
  const common = { id, 'aria-invalid': invalid, 'aria-describedby': describedBy(id, hint, msgs) };
  const placeholder =
    schema.default !== undefined && typeof schema.default !== 'object' ? `default: ${schema.default}` : undefined;

  if (kind === 'boolean') {
    const checked = value === undefined ? !!schema.default : !!value;
    return (
      <div class={`field check ${msgs ? 'invalid' : ''}`}>
        <input type="checkbox" {...common} checked={checked} onChange={(e) => onChange(e.currentTarget.checked)} />
        <Label id={id} title={title} required={required} />
        <Hint id={id} text={hint} />
        <Messages id={`${id}-err`} path={path} msgs={msgs} />
      </div>
    );
  }
  if (kind === 'enum') {
    const opts = schema.enum.filter((v) => v !== null);
    const unset = value === undefined || value === null;
    return (
      <div class={`field ${msgs ? 'invalid' : ''}`}>
        <Label id={id} title={title} required={required} />
        <select
          {...common}
          value={unset ? '' : JSON.stringify(value)}
          onChange={(e) => onChange(e.currentTarget.value === '' ? undefined : JSON.parse(e.currentTarget.value))}
        >
          <option value="">
            {schema.default !== undefined ? `(not set: ${schema.default === '' ? 'empty' : schema.default})` : '(not set)'}
          </option>
          {opts.map((v) => (
            <option key={String(v)} value={JSON.stringify(v)}>
              {v === '' ? '(empty)' : String(v)}
            </option>
          ))}
          {!unset && !opts.includes(value) && <option value={JSON.stringify(value)}>{String(value)}</option>}
        </select>
        <Hint id={id} text={hint} />
        <Messages id={`${id}-err`} path={path} msgs={msgs} />
      </div>
    );
  }
  if (kind === 'string' || kind === 'number') {
    const secret = !!schema.writeOnly;
    const text = value === undefined || value === null ? '' : typeof value === 'string' ? value : JSON.stringify(value);
    return (
      <div class={`field ${msgs ? 'invalid' : ''}`}>
        <Label id={id} title={title} required={required} />
        <input
          {...common}
          type={secret ? 'password' : 'text'}
          autocomplete={secret ? 'new-password' : 'off'}
          inputMode={kind === 'number' ? 'decimal' : undefined}
          spellcheck={false}
          placeholder={placeholder}
          value={text}
          onInput={(e) => {
            const t = e.currentTarget.value;
            if (kind === 'number') onChange(parseNumber(t));
            else onChange(t === '' && !required ? undefined : t);
          }}
        />
        <Hint id={id} text={hint} />
        <Messages id={`${id}-err`} path={path} msgs={msgs} />
      </div>
    );
  }
  if (kind === 'object') {
    return (
      <fieldset class={`group ${msgs ? 'invalid' : ''}`} aria-describedby={describedBy(id, hint, msgs)}>
        <legend>{title}</legend>
        <Hint id={id} text={hint} />
        <Messages id={`${id}-err`} path={path} msgs={msgs} />
        <SchemaFields
          schema={schema}
          value={value && typeof value === 'object' ? value : {}}
          onChange={(v) => onChange(Object.keys(v).length ? v : undefined)}
          path={path}
          problems={problems}
        />
      </fieldset>
    );
  }
  if (kind === 'rows' || kind === 'strings') {
    const list = Array.isArray(value) ? value : [];
    const items = schema.items || {};
    const set = (i, v) => {
      const next = list.slice();
      next[i] = v;
      onChange(next);
    };
    const remove = (i) => {
      const next = list.filter((_, k) => k !== i);
      onChange(next.length || required ? next : undefined);
    };
    const itemSchema = kind === 'rows' ? items : stringVariant(items) || items;
    return (
      <fieldset class={`group ${msgs ? 'invalid' : ''}`} aria-describedby={describedBy(id, hint, msgs)}>
        <legend>{title}</legend>
        <Hint id={id} text={hint} />
        <Messages id={`${id}-err`} path={path} msgs={msgs} />
        {list.map((item, i) => {
          const p = `${path}[${i}]`;
          const rowMsgs = at(problems, p);
          return (
            <div class="row" key={i}>
              {kind === 'rows' && item && typeof item === 'object' && !Array.isArray(item) ? (
                <SchemaFields
                  schema={itemSchema}
                  value={item}
                  onChange={(v) => set(i, v)}
                  path={p}
                  problems={problems}
                  labelSuffix={` ${i + 1}`}
                />
              ) : typeof item === 'string' || item === undefined ? (
                <SchemaField
                  name={`${title} ${i + 1}`}
                  schema={{ ...itemSchema, title: `${title} ${i + 1}`, description: undefined }}
                  value={item}
                  onChange={(v) => set(i, v === undefined ? '' : v)}
                  path={p}
                  problems={problems}
                  required
                />
              ) : (
                <JsonBox
                  id={fieldId(p)}
                  title={`${title} ${i + 1}`}
                  value={item}
                  onChange={(v) => set(i, v)}
                  path={p}
                />
              )}
              {rowMsgs && kind === 'rows' && <Messages id={`${fieldId(p)}-err`} path={p} msgs={rowMsgs} />}
              <button type="button" class="ghost small" aria-label={`Remove entry ${i + 1} of ${title}`} onClick={() => remove(i)}>
                Remove entry {i + 1}
              </button>
            </div>
          );
        })}
        <button
          type="button"
          class="ghost small"
          aria-label={`Add entry to ${title}`}
          onClick={() => onChange(list.concat([kind === 'rows' ? {} : '']))}
        >
          Add entry
        </button>
      </fieldset>
    );
  }
  return (
    <JsonBox
      id={id}
      title={title}
      value={value}
      onChange={onChange}
      msgs={msgs}
      hint={hint}
      required={required}
      path={path}
    />
  );
}

/**
 * The fields of an object schema. `only` / `exclude` pick properties by name; keys the
 * value has but the schema does not describe are kept as they are.
 */
export function SchemaFields({ schema, value, onChange, path, problems, only, exclude, labelSuffix = '' }) {
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  // The catalogue's JSON has lost the schema files' key order: required settings first,
  // then plain values, switches, and groups and lists last.
  const rank = (k) => (required.has(k) ? 0 : { string: 1, number: 1, enum: 1, boolean: 2, object: 3 }[kindOf(props[k])] ?? 4);
  const names = Object.keys(props)
    .filter((k) => (!only || only.includes(k)) && (!exclude || !exclude.includes(k)))
    .sort((a, b) => rank(a) - rank(b));
  const v = value || {};
  return (
    <div class="fields">
      {names.map((k) => (
        <SchemaField
          key={k}
          name={k}
          schema={labelSuffix ? { ...props[k], title: `${props[k].title || k}${labelSuffix}` } : props[k]}
          value={v[k]}
          required={required.has(k)}
          path={`${path}.${k}`}
          problems={problems}
          onChange={(x) => {
            const next = { ...v };
            if (x === undefined) delete next[k];
            else next[k] = x;
            onChange(next);
          }}
        />
      ))}
    </div>
  );
}
