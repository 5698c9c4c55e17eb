// The model picker beside the persona menu, and the model label (with its token usage on
// demand) under each answer.
//
// The picker lists GET /models and is hidden when there is only one. Its choice is kept per
// chat in localStorage (a new chat takes the picker's current choice), and sent as `model`
// with each message, so switching it sends the next message to the other model. All text is
// set with textContent: model ids come from the server's configuration, never as HTML.

import { t } from "./i18n.js";
import { safeStorage } from "./saved.js";

const STORAGE_KEY = "personachat.models";
const MAX_REMEMBERED = 200;

function remembered() {
  try {
    return JSON.parse(safeStorage(() => localStorage.getItem(STORAGE_KEY)) || "{}") || {};
  } catch {
    return {};
  }
}

export class ModelPicker {
  constructor({ wrapper, select, load }) {
    this.wrapper = wrapper;
    this.select = select;
    this.loader = load;
    this.ids = [];
    this.defaultModel = null;
    this.sessionId = null;
    select.addEventListener("change", () => this.remember());
  }

  async load() {
    let data;
    try {
      data = await this.loader();
    } catch {
      data = { models: [], default_model: null }; // the page works without: the server's default answers
    }
    this.ids = data.models.map((model) => model.id);
    this.defaultModel = data.default_model;
    this.select.replaceChildren(...data.models.map((model) => {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.id;
      option.title = `${model.provider} · ${model.context_window.toLocaleString()}`;
      return option;
    }));
    if (this.defaultModel) this.select.value = this.defaultModel;
    this.wrapper.hidden = this.ids.length < 2;
  }

  /** The model to send with the next message; null when there is nothing to choose. */
  value() {
    return this.ids.length > 1 && this.ids.includes(this.select.value) ? this.select.value : null;
  }

  /** Show the chat's remembered choice (`fallback` for a chat with none: the session's model). */
  open(sessionId, fallback = null) {
    this.sessionId = sessionId;
    const choice = (sessionId && remembered()[sessionId]) || fallback;
    if (choice && this.ids.includes(choice)) this.select.value = choice;
  }

  /** Keep the picker's choice for the open chat (called on change, and when a chat starts). */
  remember(sessionId = this.sessionId) {
    this.sessionId = sessionId;
    const model = this.value();
    if (!sessionId || !model) return;
    const all = remembered();
    delete all[sessionId];
    all[sessionId] = model;
    const keys = Object.keys(all);
    for (const key of keys.slice(0, Math.max(0, keys.length - MAX_REMEMBERED))) delete all[key];
    safeStorage(() => localStorage.setItem(STORAGE_KEY, JSON.stringify(all)));
  }
}

/** Label an answer with the model that wrote it; its token usage shows on demand (a click, or
 * the tooltip). Called again when the usage arrives with the `end` event. */
export function labelAnswer(answer, model, usage = null) {
  if (!answer || !model) return;
  let label = answer.row.querySelector(".answer-model");
  if (!label) {
    label = document.createElement("button");
    label.type = "button";
    label.className = "answer-model";
    const detail = document.createElement("span");
    detail.className = "answer-usage";
    detail.hidden = true;
    label.addEventListener("click", () => {
      if (detail.textContent) detail.hidden = !detail.hidden;
      label.setAttribute("aria-expanded", String(!detail.hidden));
    });
    answer.nameEl.after(label, detail);
  }
  label.textContent = model;
  label.dataset.model = model;
  const detail = label.nextElementSibling;
  if (usage) {
    const text = t("tokenUsage", { prompt: usage.prompt_tokens, completion: usage.completion_tokens });
    detail.textContent = text;
    label.title = text;
    label.setAttribute("aria-expanded", String(!detail.hidden));
  } else {
    label.title = t("modelLabel", { model });
  }
}
