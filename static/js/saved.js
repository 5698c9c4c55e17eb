// What the page keeps in localStorage so that a reload loses nothing: the open session, and
// the message of each turn still being answered (the history stores a turn only when it ends,
// so after a reload mid-answer this is how the question can be shown above the resumed answer).

const SESSION_KEY = "personachat.session";
const PENDING_KEY = "personachat.pending";

export function savedSession() {
  return safeStorage(() => localStorage.getItem(SESSION_KEY));
}

export function saveSession(sessionId) {
  safeStorage(() => (sessionId ? localStorage.setItem(SESSION_KEY, sessionId) : localStorage.removeItem(SESSION_KEY)));
}

function pendingAll() {
  try {
    return JSON.parse(safeStorage(() => localStorage.getItem(PENDING_KEY)) || "{}") || {};
  } catch {
    return {}; // not ours, or damaged: start afresh
  }
}

export function pendingFor(sessionId) {
  const entry = pendingAll()[sessionId];
  return entry && typeof entry.message === "string" ? entry : null;
}

export function setPending(sessionId, entry) {
  if (!sessionId) return;
  const all = pendingAll();
  if (entry) all[sessionId] = entry;
  else delete all[sessionId];
  safeStorage(() => localStorage.setItem(PENDING_KEY, JSON.stringify(all)));
}

/** Run a localStorage call; null when storage is disabled (private mode, blocked cookies):
 * the page still works, it just forgets on reload. */
export function safeStorage(action) {
  try {
    return action();
  } catch {
    return null;
  }
}
