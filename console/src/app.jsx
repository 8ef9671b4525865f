// The app shell: the login gate (token in sessionStorage; any 401 shows the login again),
// the header with the page navigation, and the page of the current route.
import { useEffect, useRef, useState } from 'preact/hooks';
import { clearToken, getToken, onUnauthorized } from './api.js';
import { navigate, useRoute } from './router.js';
import { Login } from './pages/login.jsx';
import { Connections } from './pages/connections.jsx';
import { Live } from './pages/live.jsx';
import { Explorer } from './pages/explorer.jsx';
import { DeadLetters } from './pages/dead-letters.jsx';
import { Transformations } from './pages/transformations.jsx';
import { Workspace } from './pages/workspace.jsx';

const PAGES = [
  { path: '/connections', title: 'Connections', Page: Connections },
  { path: '/live', title: 'Live events', Page: Live },
  { path: '/events', title: 'Event explorer', Page: Explorer },
  { path: '/dead-letters', title: 'Dead letters', Page: DeadLetters },
  { path: '/transformations', title: 'Transformations', Page: Transformations },
  { path: '/workspace', title: 'Workspace', Page: Workspace },
];

function pageOf(route) {
  return PAGES.find((p) => route === p.path || route.startsWith(p.path + '/'));
}

export function App() {
  const route = useRoute();
  const [authed, setAuthed] = useState(!!getToken());
  const [ended, setEnded] = useState(false);

  useEffect(() => {
    onUnauthorized(() => {
      setEnded(true);
      setAuthed(false);
    });
  }, []);

  const page = pageOf(route);
  // A new page moves focus to its content, so keyboard and screen-reader users start there.
  const shownPage = useRef(null);
  useEffect(() => {
    if (authed && page && shownPage.current && shownPage.current !== page.path) {
      const main = document.getElementById('main');
      if (main) main.focus();
    }
    shownPage.current = page ? page.path : null;
  }, [page, authed]);
  useEffect(() => {
    if (!page && authed) navigate('/connections', { replace: true });
  }, [page, authed]);
  useEffect(() => {
    document.title = `${authed ? (page ? page.title : 'Keel') : 'Log in'} · Keel console`;
  }, [page, authed]);

  if (!authed) {
    return (
      <Login
        ended={ended}
        onLogin={() => {
          setEnded(false);
          setAuthed(true);
        }}
      />
    );
  }
  const logout = () => {
    clearToken();
    setEnded(false);
    setAuthed(false);
  };
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class="top">
        <span class="brand" aria-hidden="true">Keel</span>
        <nav aria-label="Console pages">
          <ul>
            {PAGES.map((p) => (
              <li key={p.path}>
                <a href={`/console${p.path}`} aria-current={page === p ? 'page' : undefined}>
                  {p.title}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <button type="button" class="ghost" onClick={logout}>
          Log out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {page ? <page.Page key={page.path} route={route.slice(page.path.length)} /> : null}
      </main>
    </>
  );
}
