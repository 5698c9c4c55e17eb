// The chat page: personas, sessions, sending a message and following its answer.
//
// This module holds the page's state and wires the controls to it; the pieces it uses are
// api.js (REST), stream.js (one turn's events), conversation.js (what is on screen),
// sidebar.js (the chat list), saved.js (what survives a reload), personas.js (the editor of
// one's own personas), feedback.js and i18n.js.

import { api } from "./api.js";
import { Conversation, element } from "./conversation.js";
import { confirm, copyText, toast } from "./feedback.js";
import { applyTranslations, detectLanguage, hasKey, language, setLanguage, t } from "./i18n.js";
import { labelAnswer, ModelPicker } from "./models.js";
import { PersonaEditor } from "./personas.js";
import { pendingFor, savedSession, saveSession, setPending } from "./saved.js";
import { Sidebar } from "./sidebar.js";
import { newClientMessageId, streamTurn } from "./stream.js";

const STOP_GRACE_MS = 8000;
const LOST_RECOVERIES = 3;
// Errors that the same message cannot fix by being sent again.
const NO_RETRY = new Set(["session_not_found", "message_too_long", "empty_message", "invalid_request",
  "not_authenticated", "invalid_api_key"]);

const $ = (id) => document.getElementById(id);
const ui = {
  layout: $("layout"),
  title: $("chat-title"),
  clearButton: $("clear-button"),
  demoNote: $("demo-note"),
  scroller: $("conversation"),
  welcome: $("welcome"),
  cards: $("persona-cards"),
  messages: $("messages"),
  composer: $("composer"),
  input: $("composer-input"),
  personaSelect: $("persona-select"),
  personaDescription: $("persona-description"),
  personaGone: $("persona-gone"),
  sendButton: $("send-button"),
  stopButton: $("stop-button"),
  languageSelect: $("language-select"),
  newChat: $("new-chat"),
};

const state = {
  roles: [],
  roleByKey: new Map(),
  defaultRole: null,
  sessionId: null,
  title: "",
  selectedRole: null,
  sessionRole: null, // the open session's persona, as the server last said
  maxPersonas: 0,
  sending: false, // between pressing Enter and the stream opening (a new chat is being started)
  turn: null, // the answer this page is following: { sessionId, stream, answer, message, role, ... }
  loadToken: 0,
};

let conversation;
let sidebar;
let editor;
let models;

init();

async function init() {
  setLanguage(detectLanguage());
  ui.languageSelect.value = language();
  conversation = new Conversation({
    scroller: ui.scroller,
    list: ui.messages,
    announcer: $("announcer"),
    jumpButton: $("jump-button"),
    onCopy: copyText,
    onEdit: editMessage,
    onRegenerate: regenerate,
  });
  sidebar = new Sidebar({
    layout: ui.layout,
    sidebar: $("sidebar"),
    list: $("session-list"),
    empty: $("sessions-empty"),
    menuButton: $("menu-button"),
    closeButton: $("sidebar-close"),
    scrim: $("scrim"),
    onOpen: (id, turnId = null) => openSession(id).then(() => turnId && conversation.reveal(turnId)),
    onDelete: deleteSession,
    onRename: renameSession,
    personaName,
    search: (q) => api.search(q),
    searchInput: $("session-search"),
    searchResults: $("search-results"),
    searchEmpty: $("search-empty"),
  });
  editor = new PersonaEditor({
    roles: () => state.roles,
    limit: () => state.maxPersonas,
    onChange: refreshRoles,
    messageFor,
  });
  bindControls();
  models = new ModelPicker({ wrapper: $("model-picker"), select: $("model-select"), load: api.models });
  const modelsLoaded = models.load();
  try {
    await loadRoles();
  } catch (error) {
    conversation.addAnswer("").fail(() => messageFor(error), { onRetry: () => location.reload() });
  }
  const sessionsLoaded = refreshSessions();
  await modelsLoaded;
  const saved = savedSession();
  if (saved) await openSession(saved, { restoring: true });
  else showDraft();
  await sessionsLoaded;
  document.body.dataset.ready = "true";
}

function bindControls() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  ui.input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; never send while an IME is composing (Chinese input).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape" && state.turn) {
      event.preventDefault();
      stopAnswer();
    }
  });
  ui.input.addEventListener("input", () => {
    autosize();
    updateSendButton();
  });
  ui.stopButton.addEventListener("click", () => stopAnswer());
  ui.personaSelect.addEventListener("change", () => selectRole(ui.personaSelect.value));
  ui.newChat.addEventListener("click", () => {
    sidebar.closeDrawer({ restoreFocus: false });
    showDraft();
  });
  ui.clearButton.addEventListener("click", () => clearSession());
  $("personas-open").addEventListener("click", () => editor.open());
  $("personas-open-start").addEventListener("click", () => editor.open());
  $("persona-create-start").addEventListener("click", () => editor.openNew());
  ui.languageSelect.addEventListener("change", () => {
    setLanguage(ui.languageSelect.value, { remember: true });
    conversation.retranslate();
    sidebar.render();
    renderRoles();
    updatePersonaUi();
    updateChrome();
  });
}

// -- personas ------------------------------------------------------------------------------

async function loadRoles() {
  const data = await api.roles();
  state.roles = data.roles;
  state.roleByKey = new Map(data.roles.map((role) => [role.key, role]));
  state.defaultRole = data.default_role;
  state.maxPersonas = data.max_personas;
  ui.demoNote.hidden = !data.demo_model;
  renderRoles();
  selectRole(state.defaultRole);
}

/** After the editor changed the person's personas: reload them, and pick `persona` when given
 * (one just made); a selected persona that was deleted falls back to the default. */
async function refreshRoles(persona = null) {
  const selected = persona?.key || state.selectedRole;
  try {
    await loadRoles();
  } catch (error) {
    toast(messageFor(error));
    return;
  }
  selectRole(selected);
  updateChrome();
}

function optionFor(role) {
  const option = element("option", "", role.name);
  option.value = role.key;
  return option;
}

/** The persona menu (own personas in a group of their own) and the start screen's cards. */
function renderRoles() {
  const shared = state.roles.filter((role) => role.source !== "user");
  const own = state.roles.filter((role) => role.source === "user");
  const groups = [];
  if (own.length) {
    const sharedGroup = element("optgroup");
    sharedGroup.label = t("sharedPersonas");
    sharedGroup.append(...shared.map(optionFor));
    const ownGroup = element("optgroup");
    ownGroup.label = t("yourPersonas");
    ownGroup.append(...own.map(optionFor));
    groups.push(sharedGroup, ownGroup);
  } else {
    groups.push(...shared.map(optionFor));
  }
  ui.personaSelect.replaceChildren(...groups);
  if (state.selectedRole) ui.personaSelect.value = state.selectedRole;
  ui.cards.replaceChildren(
    ...state.roles.map((role) => {
      const card = element("button", `persona-card${role.source === "user" ? " persona-card-own" : ""}`);
      card.type = "button";
      card.dataset.role = role.key;
      card.append(element("span", "persona-card-avatar", role.name.charAt(0).toUpperCase()),
        element("span", "persona-card-name", role.name), element("span", "persona-card-description", role.description));
      card.firstChild.setAttribute("aria-hidden", "true");
      if (role.source === "user") card.append(element("span", "persona-card-badge", t("yours")));
      card.addEventListener("click", () => {
        selectRole(role.key);
        ui.input.focus();
      });
      return card;
    }),
  );
  for (const card of ui.cards.children) {
    card.setAttribute("aria-pressed", String(card.dataset.role === state.selectedRole));
  }
}

function personaName(key) {
  const role = state.roleByKey.get(key);
  if (role) return role.name;
  return /^u-[0-9a-f]{12}$/.test(key || "") ? t("deletedPersona") : key || ""; // one's own, since deleted
}

/** The persona for the next message (sent as `role` with it). */
function selectRole(key) {
  state.selectedRole = state.roleByKey.has(key) ? key : state.defaultRole;
  updatePersonaUi();
}

function updatePersonaUi() {
  const role = state.roleByKey.get(state.selectedRole);
  if (role) ui.personaSelect.value = role.key;
  ui.personaDescription.textContent = role ? role.description : "";
  ui.input.placeholder = role ? t("placeholder", { name: role.name }) : t("placeholderDefault");
  for (const card of ui.cards.children) {
    card.setAttribute("aria-pressed", String(card.dataset.role === state.selectedRole));
  }
  // A chat whose persona was deleted goes on with the default one: say so.
  const gone = Boolean(state.sessionId && state.sessionRole && !state.roleByKey.has(state.sessionRole));
  ui.personaGone.hidden = !gone;
  ui.personaGone.textContent = gone ? t("personaGone", { name: personaName(state.defaultRole) }) : "";
}

// -- sessions ------------------------------------------------------------------------------

let sessionsRequest = 0;

async function refreshSessions() {
  // Answers can arrive out of order (one asked at a turn's start, one at its end): keep the newest.
  const request = ++sessionsRequest;
  try {
    const { sessions } = await api.sessions();
    if (request !== sessionsRequest) return;
    sidebar.setSessions(sessions);
    const current = sessions.find((session) => session.session_id === state.sessionId);
    if (current && current.title !== state.title) {
      state.title = current.title;
      updateChrome();
    }
  } catch {
    // the list stays as it was; the next change refreshes it again
  }
}

/** A new chat: nothing is created on the server until the first message is sent. */
function showDraft() {
  detachTurn();
  state.loadToken += 1;
  state.sessionId = null;
  state.sessionRole = null;
  state.title = "";
  saveSession(null);
  conversation.clear();
  sidebar.setCurrent(null);
  models.open(null); // a new chat keeps the picker's current choice
  updatePersonaUi();
  updateChrome();
  ui.input.focus();
}

async function openSession(id, { restoring = false } = {}) {
  if (id === state.sessionId && !restoring) return;
  detachTurn();
  const token = ++state.loadToken;
  let history;
  try {
    history = await api.history(id);
  } catch (error) {
    if (token !== state.loadToken) return;
    if (error.code === "session_not_found") {
      setPending(id, null);
      showDraft();
      if (!restoring) toast(t("chatGone"));
      refreshSessions();
    } else {
      // Likely passing (the store is restarting, the network blinked): keep the chat, offer a retry.
      state.sessionId = id;
      state.title = "";
      conversation.clear();
      conversation.addAnswer("").fail(() => `${t("loadFailed")} ${messageFor(error)}`, {
        onRetry: () => openSession(id, { restoring: true }),
      });
      sidebar.setCurrent(id);
      updateChrome();
    }
    return;
  }
  if (token !== state.loadToken) return;
  state.sessionId = id;
  state.sessionRole = history.role;
  state.title = history.title || "";
  saveSession(id);
  conversation.clear();
  for (const message of history.messages) showStored(message);
  selectRole(history.role);
  models.open(id, history.model);
  sidebar.setCurrent(id);
  const pending = pendingFor(id);
  if (history.running_turn_id) {
    // An answer is being written right now (a reload mid-answer, or another tab): replay it
    // from its first event and follow it live.
    const userRow = pending ? conversation.addUser(pending.message) : null;
    const answer = conversation.addAnswer(personaName(history.role));
    answer.pending();
    follow({ sessionId: id, answer, message: pending?.message ?? null, role: pending?.role ?? null, userRow,
      resumeFrom: `${history.running_turn_id}:0` });
  } else if (pending) {
    // The page went away before this message's answer ended, and it was never stored.
    setPending(id, null);
    if (!history.messages.some((message) => pending.turnId && message.turn_id === pending.turnId)) {
      const userRow = conversation.addUser(pending.message);
      const answer = conversation.addAnswer(personaName(pending.role));
      showFailure({ sessionId: id, answer, message: pending.message, role: pending.role, userRow },
        { code: "no_answer" });
    }
  }
  updateChrome();
  conversation.scrollToEnd();
}

function showStored(message) {
  if (message.role === "user") {
    conversation.addUser(message.content, { turnId: message.turn_id });
  } else {
    const answer = conversation.addAnswer(personaName(message.persona));
    if (message.turn_id) answer.row.dataset.turnId = message.turn_id;
    answer.showStored(message.content, { stopped: Boolean(message.stopped) });
    labelAnswer(answer, message.model, message.usage);
  }
}

async function renameSession(id, title) {
  try {
    await api.rename(id, title);
  } catch (error) {
    toast(messageFor(error));
    throw error;
  }
  if (id === state.sessionId) {
    state.title = title;
    updateChrome();
  }
  toast(t("chatRenamed"));
  await refreshSessions();
}

// -- rewriting the conversation: regenerate, edit and resend ------------------------------

/** Regenerate: the last answer's question again, in place of that turn. */
function regenerate(answerRow) {
  if (state.turn || state.sending) {
    toast(t("waitForAnswer"));
    return;
  }
  const rows = [...ui.messages.children];
  const userRow = rows.slice(0, rows.indexOf(answerRow)).reverse().find((row) => row.classList.contains("message-user"));
  const fromTurn = answerRow.dataset.turnId;
  if (!userRow || !fromTurn) return;
  resend(userRow, userRow.userText, fromTurn);
}

/** Edit a question in place; an earlier one only once the person agrees to lose what follows. */
async function editMessage(userRow) {
  if (state.turn || state.sending) {
    toast(t("waitForAnswer"));
    return;
  }
  if (!conversation.isLastUser(userRow)) {
    const ok = await confirm({ title: t("editEarlierTitle"), body: t("editEarlierBody"), ok: t("editEarlierOk") });
    if (!ok) {
      userRow.querySelector("button[data-action='edit']")?.focus();
      return;
    }
  }
  conversation.startEdit(userRow, (text) => {
    if (state.turn || state.sending) {
      toast(t("waitForAnswer"));
      return false;
    }
    resend(userRow, text, userRow.dataset.turnId);
    return true;
  });
}

/** Send `text` in place of the turn `fromTurn` (and all after it): the rows go, the new turn
 * follows. The server replaces them only when the new answer is stored. */
function resend(userRow, text, fromTurn) {
  for (const row of conversation.rowsFrom(userRow)) row.remove();
  send(text, state.selectedRole, null, { fromTurn });
}

async function deleteSession(id, title, button) {
  const ok = await confirm({
    title: t("deleteConfirmTitle"),
    body: t("deleteConfirmBody", { title }),
    ok: t("deleteConfirmOk"),
  });
  if (!ok) {
    button.focus();
    return;
  }
  try {
    await api.remove(id);
  } catch (error) {
    if (error.code !== "session_not_found") {
      toast(messageFor(error));
      return;
    }
  }
  setPending(id, null);
  if (id === state.sessionId) showDraft();
  toast(t("chatDeleted"));
  await refreshSessions();
}

async function clearSession() {
  const id = state.sessionId;
  if (!id || state.turn) return;
  const ok = await confirm({ title: t("clearConfirmTitle"), body: t("clearConfirmBody"), ok: t("clearConfirmOk") });
  if (!ok) {
    ui.clearButton.focus();
    return;
  }
  try {
    await api.clear(id);
  } catch (error) {
    toast(messageFor(error));
    return;
  }
  if (id !== state.sessionId) return;
  conversation.clear();
  updateChrome();
  toast(t("chatCleared"));
  ui.input.focus();
  refreshSessions();
}

// -- sending and following an answer -----------------------------------------------------

function submit() {
  const text = ui.input.value;
  if (!text.trim()) return;
  if (state.turn || state.sending) {
    toast(t("waitForAnswer"));
    return;
  }
  ui.input.value = "";
  autosize();
  send(text, state.selectedRole);
}

async function send(message, role, userRow = null, { fromTurn = null, clientMessageId = null } = {}) {
  // One id per message, kept by its retries after a network error: a send whose answer was
  // lost on the way is replayed by the server, never sent twice.
  const messageId = clientMessageId || newClientMessageId();
  state.sending = true;
  setStreaming(true);
  let sessionId = state.sessionId;
  if (!sessionId) {
    try {
      const started = await api.start(role, models.value());
      sessionId = started.session_id;
      state.sessionId = sessionId;
      state.sessionRole = started.role;
      state.title = "";
      saveSession(sessionId);
      models.remember(sessionId);
      sidebar.setCurrent(sessionId);
      if (started.welcome_message) {
        conversation.addAnswer(personaName(started.role), { welcome: true }).showStored(started.welcome_message);
      }
    } catch (error) {
      state.sending = false;
      setStreaming(false);
      const row = userRow || conversation.addUser(message);
      const answer = conversation.addAnswer(personaName(role));
      showFailure({ sessionId: null, answer, message, role, userRow: row, fromTurn, clientMessageId: messageId }, error);
      updateChrome();
      return;
    }
  }
  const row = userRow || conversation.addUser(message);
  const answer = conversation.addAnswer(personaName(role));
  answer.pending();
  conversation.scrollToEnd();
  setPending(sessionId, { message, role });
  state.sending = false;
  follow({ sessionId, answer, message, role, userRow: row, resumeFrom: null, fromTurn, clientMessageId: messageId });
  updateChrome();
}

/** Listen to a turn's events (a new message, or `resumeFrom` an event id) until it ends. */
function follow({ sessionId, answer, message, role, userRow, resumeFrom, fromTurn = null, clientMessageId = null }) {
  const turn = { sessionId, answer, message, role, userRow, turnId: null, stream: null, recoveries: 0, fromTurn,
    clientMessageId };
  state.turn = turn;
  setStreaming(true);
  const model = message !== null && resumeFrom === null ? models.value() : null;
  turn.stream = streamTurn(
    { sessionId, message, role, resumeFrom, fromTurn, clientMessageId, model },
    handlersFor(turn),
  );
}

function handlersFor(turn) {
  const current = () => state.turn === turn;
  return {
    onStart(event) {
      if (!current()) return;
      turn.turnId = event.turn_id;
      turn.answer.row.dataset.turnId = event.turn_id;
      if (turn.userRow) turn.userRow.dataset.turnId = event.turn_id;
      turn.answer.setPersona(personaName(event.role));
      labelAnswer(turn.answer, event.model);
      state.sessionRole = event.role;
      updatePersonaUi();
      if (turn.message !== null) setPending(turn.sessionId, { message: turn.message, role: turn.role, turnId: event.turn_id });
      if (turn.stopRequested) api.stop(turn.sessionId).catch(() => {});
      refreshSessions();
    },
    onChunk(text) {
      if (current()) turn.answer.append(text);
    },
    onEnd(event) {
      if (!current()) return;
      endTurn(turn);
      const stopped = event.finish_reason === "stopped";
      turn.answer.finish({ stopped });
      if (event.usage) labelAnswer(turn.answer, turn.answer.row.querySelector(".answer-model")?.dataset.model, event.usage);
      if (stopped) conversation.announce(t("stoppedAnnounce"));
      setPending(turn.sessionId, null);
      refreshSessions();
      // A first answer may be followed by an automatic title (AUTO_TITLE): look again soon.
      if (ui.messages.querySelectorAll(".message-user").length === 1) setTimeout(refreshSessions, 6000);
    },
    onError(error) {
      if (!current()) return;
      delete turn.answer.row.dataset.turnId; // a failed turn stores nothing: nothing to edit
      conversation.setTurn(turn.userRow, null);
      endTurn(turn);
      setPending(turn.sessionId, null);
      showFailure(turn, error);
      refreshSessions();
    },
    onLost() {
      if (current()) recover(turn);
    },
  };
}

/** The stream ended with no final event and cannot resume: ask the history what happened. */
async function recover(turn) {
  let history = null;
  try {
    history = await api.history(turn.sessionId);
  } catch {
    // treated as lost below
  }
  if (state.turn !== turn) return;
  if (history?.running_turn_id && turn.recoveries < LOST_RECOVERIES) {
    turn.recoveries += 1;
    turn.answer.reset();
    turn.stream = streamTurn({ sessionId: turn.sessionId, resumeFrom: `${history.running_turn_id}:0` },
      handlersFor(turn));
    return;
  }
  endTurn(turn);
  setPending(turn.sessionId, null);
  const stored = history?.messages.find((m) => m.role === "assistant" && turn.turnId && m.turn_id === turn.turnId);
  if (stored) {
    turn.answer.text = stored.content;
    turn.answer.finish({ stopped: Boolean(stored.stopped) });
  } else {
    showFailure(turn, { code: "turn_lost" });
  }
  refreshSessions();
}

function showFailure(turn, error) {
  const code = error.code === "invalid_api_key" ? "not_authenticated" : error.code;
  const canRetry = turn.message !== null && turn.message !== undefined && !NO_RETRY.has(code);
  const retry = () => {
    if (state.turn || state.sending) {
      toast(t("waitForAnswer"));
      return false;
    }
    turn.answer.remove();
    // Not answered because the network failed: the server may have the message already, so
    // the same id goes again (it replays that turn). Any other failure stored nothing: a new id.
    const sameId = error.code === "network" ? turn.clientMessageId : null;
    send(turn.message, state.selectedRole || turn.role, turn.userRow,
      { fromTurn: turn.fromTurn || null, clientMessageId: sameId });
    return true;
  };
  turn.answer.fail(() => messageFor({ ...error, code }), {
    onRetry: canRetry ? retry : null,
    retryAfter: error.retryAfter || 0,
  });
  if (!canRetry && turn.message && !ui.input.value) {
    // Let the person edit and resend it (too long, or the chat is gone).
    ui.input.value = turn.message;
    autosize();
    updateSendButton();
  }
  if (code === "session_not_found" && turn.sessionId === state.sessionId) {
    saveSession(null);
    state.sessionId = null;
    sidebar.setCurrent(null);
    refreshSessions();
  }
}

async function stopAnswer() {
  const turn = state.turn;
  if (!turn || turn.stopping) return;
  turn.stopping = true;
  ui.stopButton.disabled = true;
  turn.stopRequested = true;
  try {
    await api.stop(turn.sessionId);
  } catch (error) {
    toast(messageFor(error));
  }
  // Every reader gets `end` with finish_reason "stopped"; if it never comes, stop waiting.
  turn.stopTimer = setTimeout(() => {
    if (state.turn !== turn) return;
    turn.stream.close();
    endTurn(turn);
    turn.answer.finish({ stopped: true });
    setPending(turn.sessionId, null);
    refreshSessions();
  }, STOP_GRACE_MS);
}

function endTurn(turn) {
  clearTimeout(turn.stopTimer);
  if (state.turn === turn) state.turn = null;
  setStreaming(false);
  updateChrome();
}

/** Stop following the current answer (switching chats): the turn goes on and is stored. */
function detachTurn() {
  const turn = state.turn;
  if (!turn) return;
  turn.stream.close();
  clearTimeout(turn.stopTimer);
  state.turn = null;
  setStreaming(false);
}

function messageFor(error) {
  if (error.code === "rate_limited" && error.retryAfter) return t("err_rate_limited_wait", { seconds: error.retryAfter });
  const key = `err_${error.code}`;
  return hasKey(key) ? t(key) : t("err_unknown");
}

// -- small pieces of the page ------------------------------------------------------------

function setStreaming(on) {
  conversation.refreshActions(on);
  ui.composer.classList.toggle("is-streaming", on);
  ui.sendButton.hidden = on;
  ui.stopButton.hidden = !on;
  ui.stopButton.disabled = false;
  updateSendButton();
}

function updateSendButton() {
  ui.sendButton.disabled = !ui.input.value.trim() || Boolean(state.turn) || state.sending;
}

function updateChrome() {
  const draft = !state.sessionId;
  ui.title.textContent = draft ? t("newChat") : state.title || t("untitled");
  ui.clearButton.hidden = draft || conversation.isEmpty;
  ui.clearButton.disabled = Boolean(state.turn);
  ui.welcome.hidden = !conversation.isEmpty;
  ui.scroller.classList.toggle("is-empty", conversation.isEmpty);
}

const AUTOSIZE_BY_CSS = typeof CSS !== "undefined" && CSS.supports("field-sizing", "content");

function autosize() {
  if (AUTOSIZE_BY_CSS) return;
  ui.input.style.height = "auto"; // CSSOM, not a style attribute: allowed by the page's CSP
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 240)}px`;
}

// Re-translate the static page when the language changes in another tab.
window.addEventListener("storage", (event) => {
  if (event.key === "personachat.language" && event.newValue && event.newValue !== language()) {
    setLanguage(event.newValue);
    ui.languageSelect.value = language();
    applyTranslations(document);
    conversation.retranslate();
    sidebar.render();
    updatePersonaUi();
    updateChrome();
  }
});
