// The service's REST endpoints, as small functions that return parsed JSON or throw ApiError.
//
// Relative URLs throughout, so the page also works when the app is served under a path prefix.

/** A failed request: `status` (0 when the server could not be reached), the service's stable
 * `code` (see API.md), its `detail`, and `retryAfter` seconds when the server sent one. */
export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

const FALLBACK_CODES = { 404: "session_not_found", 409: "turn_in_progress", 413: "message_too_long",
  422: "invalid_request", 429: "rate_limited", 503: "store_unavailable" };

/** Turn a non-2xx response into an ApiError, reading the JSON `{code, detail}` body when there is one. */
export async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page, an empty body): the status alone decides
  }
  const code = (body && typeof body.code === "string" && body.code) || FALLBACK_CODES[response.status]
    || (response.status >= 500 ? "internal_error" : "unknown");
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(response.status, code, body && body.detail, Number.isFinite(retryAfter) ? retryAfter : null);
}

async function request(method, path, { query, body } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(query || {})) url.searchParams.set(key, value);
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "network", "network error");
  }
  if (!response.ok) throw await errorFromResponse(response);
  return response.json();
}

export const api = {
  roles: () => request("GET", "roles"),
  start: (role, model = null) => request("POST", "chat/start", { body: { ...(role ? { role } : {}), ...(model ? { model } : {}) } }),
  models: () => request("GET", "models"),
  usage: () => request("GET", "usage"),
  sessions: () => request("GET", "chat/sessions"),
  history: (sessionId) => request("GET", "chat/history", { query: { session_id: sessionId } }),
  clear: (sessionId) => request("DELETE", `chat/history/${encodeURIComponent(sessionId)}`),
  remove: (sessionId) => request("DELETE", `chat/sessions/${encodeURIComponent(sessionId)}`),
  stop: (sessionId) => request("POST", "chat/stop", { query: { session_id: sessionId } }),
  rename: (sessionId, title) => request("PATCH", `chat/sessions/${encodeURIComponent(sessionId)}`, { body: { title } }),
  search: (q, limit = 20) => request("GET", "chat/search", { query: { q, limit } }),
};
