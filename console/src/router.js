// Client-side routing under /console/: the current route as a hook, navigation with the
// History API, and link clicks intercepted so pages change without a reload (Keel serves
// index.html for every path under /console/, so a reload or a shared link works too).
import { useEffect, useState } from 'preact/hooks';

export const BASE = '/console';

/** The path below /console ('/live', '/events/abc'…), '/' for the root. */
export function currentRoute() {
  const p = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : '/';
  return p === '' ? '/' : p;
}

const listeners = new Set();

export function navigate(route, { replace = false } = {}) {
  const url = BASE + route;
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  listeners.forEach((fn) => fn());
}

addEventListener('popstate', () => listeners.forEach((fn) => fn()));

// Same-origin links under /console/ navigate in place (ctrl/shift/middle clicks do not).
addEventListener('click', (e) => {
  const a = e.target.closest && e.target.closest('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  if (a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(BASE + '/')) return;
  e.preventDefault();
  navigate(url.pathname.slice(BASE.length) + url.search);
});

export function useRoute() {
  const [route, setRoute] = useState(currentRoute());
  useEffect(() => {
    const fn = () => setRoute(currentRoute());
    listeners.add(fn);
    return () => listeners.delete(fn);
  }, []);
  return route;
}
