// The page's one way to the host: fetch with the session cookie, the CSRF
// token on every change, and the host's `{"error"}` turned into an Error
// whose message is shown as it is. No Authorization header is ever sent:
// the bearer token is exchanged for the cookie once, at sign-in, and
// forgotten.

/// The session's CSRF token: in this variable only, never in storage.
let csrf = null;
/// Called when the host says the session is over (401).
let onSessionEnded = () => {};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/// `callback` runs when any call answers 401 (expired, signed out elsewhere,
/// token revoked, host restarted).
export function whenSessionEnds(callback) {
  onSessionEnded = callback;
}

/// One API call; resolves to the parsed JSON answer (null for no body).
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf !== null) headers["X-Coffer-CSRF"] = csrf;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, `the host did not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.error ?? `${response.status} ${response.statusText}`;
    if (response.status === 401 && !path.startsWith("/v1/sessions")) onSessionEnded(message);
    throw new ApiError(response.status, message);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const remove = (path) => call("DELETE", path);

/// Exchanges a pasted token for a session; the token is not kept here.
export async function signIn(token) {
  const session = await call("POST", "/v1/sessions", { token });
  csrf = session.csrf;
  return session;
}

/// The session the cookie names, or null when there is none.
export async function currentSession() {
  try {
    const session = await get("/v1/sessions/current");
    csrf = session.csrf;
    return session;
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

/// Ends the session on the host, then here.
export async function signOut() {
  await remove("/v1/sessions/current");
  csrf = null;
}

/// Drops the CSRF token when the host has already ended the session.
export function forgetSession() {
  csrf = null;
}

/// `/v1/tenants/{id}` and what follows, ids escaped.
export function tenantPath(tenant, ...rest) {
  return ["/v1/tenants", tenant, ...rest].map((part, i) => (i === 0 ? part : encodeURIComponent(part))).join("/");
}
