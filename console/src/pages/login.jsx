// The login page: asks for the admin token, checks it against the admin API and keeps it in
// sessionStorage (this tab only); says why when the token is refused or the API is off.
import { useState } from 'preact/hooks';
import { api, setToken } from '../api.js';

export function Login({ ended, onLogin }) {
  const [value, setValue] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e) => {
    e.preventDefault();
    const token = value.trim();
    if (!token) {
      setError('Enter the admin token.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await api('/admin/connections', { token });
      setToken(token);
      onLogin();
    } catch (err) {
      setError(
        err.status === 401
          ? 'That token was refused. Use the value of admin.token (KEEL_ADMIN__TOKEN).'
          : err.message,
      );
    } finally {
      setBusy(false);
    }
  };

  return (
    <main id="main" class="login">
      <h1>Keel console</h1>
      {ended && (
        <p class="notice" role="status">
          Your session ended (the admin token was refused or removed). Log in again.
        </p>
      )}
      <form onSubmit={submit} aria-describedby={error ? 'login-error' : undefined}>
        <label for="token">Admin token</label>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="current-password"
          value={value}
          onInput={(e) => setValue(e.currentTarget.value)}
          aria-invalid={error ? 'true' : undefined}
          required
        />
        <p class="hint">The value of <code>admin.token</code> in keel.toml or <code>KEEL_ADMIN__TOKEN</code>. It is kept in this tab only.</p>
        {error && (
          <p id="login-error" class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? 'Checking…' : 'Log in'}
        </button>
      </form>
    </main>
  );
}
