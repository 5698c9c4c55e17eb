// The conversation on screen: message bubbles, the streaming answer, auto-scroll, and what
// a screen reader hears.
//
// User text is only ever set with textContent. Answers go through markdown.js (sanitised).
// Screen readers: the message log itself is not live (re-rendering a growing answer would be
// read again and again); instead each finished block of an answer (a paragraph, a list, a
// code block) is copied as plain text into one polite live region, so the answer is read
// as it streams, once.
//
// Rewriting: a message that is stored carries its turn's id (`data-turn-id`). The last answer
// has a Regenerate action and every user message an Edit action (the page decides what they
// do, see app.js); an edit happens in place, in a text box that replaces the bubble.

import { MarkdownView } from "./markdown.js";
import { t } from "./i18n.js";
import { icon } from "./icons.js";

const FOLLOW_SLACK_PX = 48;
const ANNOUNCER_KEEP = 6;

export class Conversation {
  constructor({ scroller, list, announcer, jumpButton, onCopy, onEdit = () => {}, onRegenerate = () => {} }) {
    this.scroller = scroller;
    this.list = list;
    this.announcer = announcer;
    this.jumpButton = jumpButton;
    this.onCopy = onCopy;
    this.onEdit = onEdit;
    this.onRegenerate = onRegenerate;
    this.busy = false;
    this.follow = true;
    this.lastTop = 0;
    scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
    jumpButton.addEventListener("click", () => this.scrollToEnd({ smooth: true }));
    list.addEventListener("click", (event) => this.onListClick(event));
  }

  get isEmpty() {
    return this.list.childElementCount === 0;
  }

  clear() {
    this.list.replaceChildren();
    this.follow = true;
    this.jumpButton.hidden = true;
  }

  addUser(text, { turnId = null } = {}) {
    const row = element("div", "message message-user");
    const label = element("div", "visually-hidden", t("you"));
    label.dataset.i18n = "you";
    const bubble = element("div", "bubble user-text");
    bubble.textContent = text;
    row.userText = text;
    const actions = element("div", "message-actions");
    actions.append(rewriteButton("edit", "editMessage", "edit"));
    row.append(label, bubble, actions);
    this.list.append(row);
    this.setTurn(row, turnId);
    this.scrollToEnd();
    return row;
  }

  /** Mark `row` as part of the stored turn `turnId` (its actions need one). */
  setTurn(row, turnId) {
    if (!row) return;
    if (turnId) row.dataset.turnId = turnId;
    else delete row.dataset.turnId;
    this.refreshActions();
  }

  /** Regenerate on the last answer only; Edit on every stored user message; none while busy. */
  refreshActions(busy = this.busy) {
    this.busy = busy;
    const rows = [...this.list.children];
    const last = rows.at(-1);
    for (const row of rows) {
      if (row.classList.contains("message-user")) {
        const edit = row.querySelector("button[data-action='edit']");
        if (edit) {
          edit.hidden = !row.dataset.turnId || row.classList.contains("is-editing");
          edit.disabled = busy;
        }
      } else if (row.answer) {
        const wanted = row === last && !busy && Boolean(row.dataset.turnId) && !row.answer.welcome
          && !row.classList.contains("is-streaming") && !row.classList.contains("is-failed");
        const button = row.querySelector("button[data-action='regenerate']");
        if (wanted && !button) row.answer.status.append(rewriteButton("retry", "regenerate", "regenerate", "regenerate"));
        else if (!wanted && button) button.remove();
      }
    }
  }

  /** The message rows from `row` to the end (what an edit of `row` replaces). */
  rowsFrom(row) {
    const rows = [...this.list.children];
    const index = rows.indexOf(row);
    return index < 0 ? [] : rows.slice(index);
  }

  /** Whether `row` is the last user message (editing it removes nothing else but its answer). */
  isLastUser(row) {
    return !this.rowsFrom(row).slice(1).some((other) => other.classList.contains("message-user"));
  }

  /** Edit a user message in place: Send (or Enter) calls onSend(text), Esc or Cancel puts it back. */
  startEdit(row, onSend) {
    if (row.classList.contains("is-editing")) return;
    const bubble = row.querySelector(".user-text");
    const box = element("div", "edit-box");
    const input = element("textarea", "edit-input");
    input.value = row.userText ?? bubble.textContent;
    input.rows = Math.min(8, Math.max(2, input.value.split("\n").length));
    input.setAttribute("aria-label", t("editMessage"));
    input.dataset.i18nAriaLabel = "editMessage";
    const buttons = element("div", "edit-buttons");
    const cancel = element("button", "edit-cancel", t("cancel"));
    cancel.type = "button";
    cancel.dataset.i18n = "cancel";
    const send = element("button", "edit-send", t("send"));
    send.type = "button";
    send.dataset.i18n = "send";
    buttons.append(cancel, send);
    box.append(input, buttons);
    bubble.hidden = true;
    row.classList.add("is-editing");
    row.append(box);
    this.refreshActions();
    const close = () => {
      box.remove();
      bubble.hidden = false;
      row.classList.remove("is-editing");
      this.refreshActions();
    };
    const submit = () => {
      const text = input.value;
      if (!text.trim()) return;
      if (onSend(text) !== false) close();
    };
    const update = () => {
      send.disabled = !input.value.trim();
    };
    input.addEventListener("input", update);
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        submit();
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        close();
        row.querySelector("button[data-action='edit']")?.focus();
      }
    });
    cancel.addEventListener("click", () => {
      close();
      row.querySelector("button[data-action='edit']")?.focus();
    });
    send.addEventListener("click", submit);
    update();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  /** Bring the message of `turnId` into view and mark it for a moment (a search result). */
  reveal(turnId) {
    const row = [...this.list.children].find((item) => item.dataset.turnId === turnId);
    if (!row) return;
    this.follow = false;
    row.scrollIntoView({ block: "center" });
    row.classList.add("is-found");
    setTimeout(() => row.classList.remove("is-found"), 2500);
  }

  /** An assistant message, empty until text arrives. `persona` is the persona's display name. */
  addAnswer(persona, { welcome = false } = {}) {
    const answer = new Answer(this, persona, { welcome });
    this.list.append(answer.row);
    this.afterChange();
    return answer;
  }

  /** After a change of language: texts that were built from the string tables. */
  retranslate() {
    for (const row of this.list.children) row.answer?.retranslate();
  }

  announce(text) {
    const clean = text.replace(/\s+/g, " ").trim();
    if (!clean) return;
    const line = element("p", "", clean);
    this.announcer.append(line);
    while (this.announcer.childElementCount > ANNOUNCER_KEEP) this.announcer.firstElementChild.remove();
  }

  // -- auto-scroll: follow the answer until the person scrolls up ----------------------------

  onScroll() {
    const { scrollTop, scrollHeight, clientHeight } = this.scroller;
    const nearEnd = scrollHeight - scrollTop - clientHeight <= FOLLOW_SLACK_PX;
    // Content growing never moves scrollTop; only the person scrolling up does.
    if (nearEnd) this.follow = true;
    else if (scrollTop < this.lastTop - 1) this.follow = false;
    this.lastTop = scrollTop;
    this.jumpButton.hidden = nearEnd;
  }

  scrollToEnd({ smooth = false } = {}) {
    this.follow = true;
    this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: smooth ? "smooth" : "auto" });
    this.lastTop = this.scroller.scrollTop;
    this.jumpButton.hidden = true;
  }

  /** After content changed: keep following the end, or offer the jump button. */
  afterChange() {
    if (this.follow) {
      this.scroller.scrollTop = this.scroller.scrollHeight;
      this.lastTop = this.scroller.scrollTop;
    } else {
      const { scrollTop, scrollHeight, clientHeight } = this.scroller;
      this.jumpButton.hidden = scrollHeight - scrollTop - clientHeight <= FOLLOW_SLACK_PX;
    }
  }

  // -- copy buttons (delegated: code blocks are re-rendered while streaming) -------------

  onListClick(event) {
    const action = event.target.closest("button[data-action]");
    if (action && this.list.contains(action) && !action.disabled) {
      const row = action.closest(".message");
      if (action.dataset.action === "edit") this.onEdit(row);
      else if (action.dataset.action === "regenerate") this.onRegenerate(row);
      return;
    }
    const button = event.target.closest("button[data-copy]");
    if (!button || !this.list.contains(button)) return;
    let text = "";
    if (button.dataset.copy === "code") {
      text = button.closest(".code-block")?.querySelector("code")?.textContent ?? "";
    } else {
      text = button.closest(".message")?.answer?.text ?? "";
    }
    this.onCopy(text, button);
  }
}

/** One assistant message: streams in, then ends as complete, stopped, or failed. */
export class Answer {
  constructor(conversation, persona, { welcome }) {
    this.conversation = conversation;
    this.text = "";
    this.frame = 0;
    this.welcome = welcome;
    this.row = element("div", `message message-assistant${welcome ? " message-welcome" : ""}`);
    this.row.answer = this;
    const avatar = element("div", "avatar");
    avatar.setAttribute("aria-hidden", "true");
    this.avatar = avatar;
    const body = element("div", "message-body");
    this.nameEl = element("div", "persona-name");
    this.content = element("div", "bubble markdown");
    this.status = element("div", "answer-status");
    body.append(this.nameEl, this.content, this.status);
    this.row.append(avatar, body);
    this.setPersona(persona);
    this.view = new MarkdownView(this.content, {
      decorate: decorateBlock,
      onBlockDone: (block) => this.conversation.announce(blockSpeech(block)),
    });
  }

  setPersona(name) {
    this.nameEl.textContent = name || "";
    this.avatar.textContent = (name || "").trim().charAt(0).toUpperCase();
    this.avatar.hidden = !name;
  }

  /** Waiting for the first words. */
  pending() {
    this.row.classList.add("is-streaming");
    this.content.setAttribute("aria-busy", "true");
    const dots = element("div", "thinking");
    dots.append(element("span"), element("span"), element("span"));
    const label = element("span", "visually-hidden", t("thinking"));
    label.dataset.i18n = "thinking";
    dots.append(label);
    this.content.append(dots);
    this.thinking = dots;
  }

  append(chunk) {
    if (!chunk) return;
    this.text += chunk;
    if (this.thinking) {
      this.thinking.remove();
      this.thinking = null;
    }
    // Many chunks can arrive between two frames: render once, in the next frame.
    if (!this.frame) this.frame = requestAnimationFrame(() => this.renderNow());
  }

  /** Start over (a resumed turn replays from its first event). */
  reset() {
    this.text = "";
    this.cancelFrame();
    this.view.render("");
    this.view.announced = 0;
    this.row.classList.remove("is-failed", "is-stopped");
    this.status.replaceChildren();
  }

  renderNow(final = false) {
    this.cancelFrame();
    this.view.render(this.text, { final });
    this.row.dataset.renders = String(this.view.renders);
    this.conversation.afterChange();
  }

  cancelFrame() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
  }

  /** The answer is complete (or was stopped): final render and the message's actions. */
  finish({ stopped = false } = {}) {
    if (this.thinking) {
      this.thinking.remove();
      this.thinking = null;
    }
    this.renderNow(true);
    this.row.classList.remove("is-streaming");
    this.content.removeAttribute("aria-busy");
    this.status.replaceChildren();
    if (stopped) {
      this.row.classList.add("is-stopped");
      const tag = element("span", "tag", t("stopped"));
      tag.dataset.i18n = "stopped";
      this.status.append(tag);
    }
    if (this.text && !this.welcome) {
      const copy = actionButton("copy", "copyAnswer", "answer");
      this.status.append(copy);
    } else if (!stopped) {
      this.row.classList.add("is-empty");
    }
    this.conversation.refreshActions();
    this.conversation.afterChange();
  }

  /** A message from the history (or a welcome): shown whole, and not read out on loading. */
  showStored(text, { stopped = false } = {}) {
    this.text = text;
    this.view.announced = Number.POSITIVE_INFINITY;
    this.finish({ stopped });
  }

  /** The turn failed: a friendly message, and a retry button when trying again can help.
   * `message` is a function, so that the text follows a change of language. */
  fail(message, { onRetry = null, retryAfter = 0 } = {}) {
    this.errorMessage = message;
    if (this.thinking) {
      this.thinking.remove();
      this.thinking = null;
    }
    this.renderNow(true);
    this.row.classList.remove("is-streaming");
    this.row.classList.add("is-failed");
    this.content.removeAttribute("aria-busy");
    const box = element("div", "error-box");
    box.setAttribute("role", "alert");
    this.errorText = element("span", "error-text", message());
    box.append(icon("warning"), this.errorText);
    if (onRetry) {
      const retry = element("button", "retry-button");
      retry.type = "button";
      const label = element("span", "", t("retry"));
      label.dataset.i18n = "retry";
      retry.append(icon("retry"), label);
      retry.addEventListener("click", () => onRetry(), { once: true });
      if (retryAfter > 0) {
        retry.disabled = true;
        setTimeout(() => {
          retry.disabled = false;
        }, retryAfter * 1000);
      }
      box.append(retry);
    }
    this.status.replaceChildren(box);
    this.conversation.afterChange();
    return box;
  }

  retranslate() {
    if (this.errorText && this.errorMessage) this.errorText.textContent = this.errorMessage();
  }

  remove() {
    this.cancelFrame();
    this.row.remove();
  }
}

/** Chrome for a rendered block: a header with the language and a copy button on code
 * blocks, and a scroller around tables so a wide table never widens the page. */
function decorateBlock(block) {
  for (const pre of block.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const wrap = element("div", "code-block");
    const head = element("div", "code-head");
    const language = /language-([\w+#-]+)/.exec(code?.className || "")?.[1] || "";
    head.append(element("span", "code-lang", language), actionButton("copy", "copyCode", "code", "copy"));
    pre.replaceWith(wrap);
    wrap.append(head, pre);
  }
  for (const table of block.querySelectorAll("table")) {
    const wrap = element("div", "table-wrap");
    table.replaceWith(wrap);
    wrap.append(table);
  }
}

function blockSpeech(block) {
  const copy = block.cloneNode(true);
  for (const chrome of copy.querySelectorAll(".code-head")) chrome.remove();
  return copy.textContent;
}

/** Edit (on a user message) or Regenerate (on the last answer). */
function rewriteButton(iconName, labelKey, action, visibleKey = null) {
  const button = element("button", `action-button ${action}-button`);
  button.type = "button";
  button.dataset.action = action;
  button.setAttribute("aria-label", t(labelKey));
  button.dataset.i18nAriaLabel = labelKey;
  button.title = t(labelKey);
  button.dataset.i18nTitle = labelKey;
  button.append(icon(iconName));
  if (visibleKey) {
    const label = element("span", "action-label", t(visibleKey));
    label.dataset.i18n = visibleKey;
    button.append(label);
  }
  return button;
}

function actionButton(iconName, labelKey, what, visibleKey = null) {
  const button = element("button", "action-button");
  button.type = "button";
  button.dataset.copy = what;
  button.setAttribute("aria-label", t(labelKey));
  button.dataset.i18nAriaLabel = labelKey;
  button.title = t(labelKey);
  button.dataset.i18nTitle = labelKey;
  button.append(icon(iconName));
  if (visibleKey) {
    const label = element("span", "action-label", t(visibleKey));
    label.dataset.i18n = visibleKey;
    button.append(label);
  }
  return button;
}

export function element(tag, className = "", text = null) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== null) el.textContent = text;
  return el;
}
