// The admin API client: keeps the admin token in sessionStorage, sends it as a Bearer
// header, turns error answers ({error, code}) into ApiError, and reports a 401 (or a
// missing token) to the app, which shows the login again.

const TOKEN_KEY = 'keel.adminToken';

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.body = body;
  }
}

let unauthorized = () => {};

/** The app's handler for a refused or missing token. */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

export const getToken = () => sessionStorage.getItem(TOKEN_KEY);
export const setToken = (t) => sessionStorage.setItem(TOKEN_KEY, t);
export const clearToken = () => sessionStorage.removeItem(TOKEN_KEY);

/** Headers for an admin request, or null (and the login shown) without a token. */
export function authHeaders(extra = {}) {
  const token = getToken();
  if (!token) {
    unauthorized();
    return null;
  }
  return { Authorization: `Bearer ${token}`, ...extra };
}

/** Handles a 401: forgets the token and shows the login. */
export function refused(res) {
  if (res.status === 401) {
    clearToken();
    unauthorized();
    return true;
  }
  return false;
}

/**
 * `method path` with the token (and `body` as JSON): the JSON answer, or throws ApiError
 * (with the answer's body, e.g. `problems`) for any non-2xx status.
 */
export async function api(path, { method = 'GET', body, signal, token } = {}) {
  const headers = token
    ? { Authorization: `Bearer ${token}` }
    : authHeaders();
  if (!headers) throw new ApiError(401, { error: 'not logged in', code: 'no_token' });
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  const text = await res.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!token && refused(res)) throw new ApiError(401, data);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}
