// Small helpers the pages share: number, rate and time formatting, JSON display, a hook that
// loads a resource (optionally every few seconds) and one for an async action's state.
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';

export const fmtInt = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en'));

export function fmtRate(n) {
  if (n == null || !isFinite(n)) return '–';
  return n >= 100 ? Math.round(n).toLocaleString('en') : n.toFixed(1);
}

export function fmtPercent(x) {
  if (x == null || !isFinite(x)) return '–';
  if (x === 0) return '0 %';
  return x < 0.001 ? '< 0.1 %' : `${(x * 100).toFixed(1)} %`;
}

export function fmtTime(t) {
  if (!t) return '–';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleTimeString('en-GB', { hour12: false });
}

export function fmtDateTime(t) {
  if (!t) return '–';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export const pretty = (v) => (typeof v === 'string' ? v : JSON.stringify(v, null, 2));

/**
 * Loads `fn()` now, whenever `deps` change and, with `everyMs`, again on that period
 * (never two loads at once). Returns {data, error, loading, reload}.
 */
export function useLoad(fn, deps = [], everyMs = 0) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const busy = useRef(false);
  const alive = useRef(true);
  const load = useCallback(async () => {
    if (busy.current) return;
    busy.current = true;
    try {
      const data = await fn();
      if (alive.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (alive.current && error.status !== 401) setState((s) => ({ ...s, error, loading: false }));
    } finally {
      busy.current = false;
    }
  }, deps);
  useEffect(() => {
    alive.current = true;
    load();
    const t = everyMs ? setInterval(load, everyMs) : null;
    return () => {
      alive.current = false;
      if (t) clearInterval(t);
    };
  }, [load, everyMs]);
  return { ...state, reload: load };
}

/** An async action's state: run(fn) sets busy, then result or error. */
export function useAction() {
  const [state, setState] = useState({ busy: false, result: null, error: null });
  const run = async (fn) => {
    setState({ busy: true, result: null, error: null });
    try {
      const result = await fn();
      setState({ busy: false, result, error: null });
      return result;
    } catch (error) {
      setState({ busy: false, result: null, error });
      return undefined;
    }
  };
  return [state, run, setState];
}
