// The persona editor: the person's own personas (create, edit, delete, import a character
// card by file picker or drag and drop, export one as a Character Card V2 JSON file).
//
// Everything a persona or a card holds is user input: it is put on the page with
// textContent and form values only, never as markup.

import { ApiError, errorFromResponse } from "./api.js";
import { element } from "./conversation.js";
import { confirm, toast } from "./feedback.js";
import { t } from "./i18n.js";
import { icon } from "./icons.js";

const $ = (id) => document.getElementById(id);

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), {
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

const rolePath = (key) => `roles/${encodeURIComponent(key)}`;

/** A card file as the request body: PNG bytes as image/png, anything else as JSON. */
async function importFile(file) {
  const isPng = file.type === "image/png" || /\.png$/i.test(file.name);
  let response;
  try {
    response = await fetch(new URL("roles/import", document.baseURI), {
      method: "POST",
      headers: { "Content-Type": isPng ? "image/png" : "application/json" },
      body: file,
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "network", "network error");
  }
  if (!response.ok) throw await errorFromResponse(response);
  return response.json();
}

export class PersonaEditor {
  /** `roles()` gives the current /roles entries and `limit()` how many own ones a user may keep;
   * `onChange(persona?)` reloads the page's menus. */
  constructor({ roles, limit, onChange, messageFor }) {
    this.roles = roles;
    this.limit = limit;
    this.onChange = onChange;
    this.messageFor = messageFor;
    this.editing = null; // the key being edited, or "" for a new persona
    this.ui = {
      dialog: $("personas-dialog"),
      listView: $("personas-list-view"),
      list: $("personas-list"),
      empty: $("personas-empty"),
      count: $("personas-count"),
      drop: $("personas-drop"),
      file: $("persona-file"),
      error: $("personas-error"),
      form: $("persona-form"),
      formTitle: $("persona-form-title"),
      formError: $("persona-form-error"),
      name: $("persona-name"),
      description: $("persona-summary"),
      prompt: $("persona-prompt"),
      welcome: $("persona-welcome"),
      temperature: $("persona-temperature"),
      model: $("persona-model"),
    };
    const { ui } = this;
    $("personas-close").addEventListener("click", () => ui.dialog.close());
    $("persona-new").addEventListener("click", () => this.edit(null));
    $("persona-cancel").addEventListener("click", () => this.showList());
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    ui.file.addEventListener("change", () => {
      const [file] = ui.file.files;
      ui.file.value = "";
      if (file) this.import(file);
    });
    // A card dropped anywhere on the editor is imported.
    ui.dialog.addEventListener("dragover", (event) => {
      if (!event.dataTransfer?.types.includes("Files")) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      ui.drop.classList.add("is-over");
    });
    ui.dialog.addEventListener("dragleave", (event) => {
      if (!ui.dialog.contains(event.relatedTarget)) ui.drop.classList.remove("is-over");
    });
    ui.dialog.addEventListener("drop", (event) => {
      event.preventDefault();
      event.stopPropagation();
      ui.drop.classList.remove("is-over");
      const file = event.dataTransfer?.files[0];
      if (file) this.import(file);
    });
    // A card dropped on the page itself opens the editor and is imported (rather than the
    // browser leaving the chat to show the file).
    document.addEventListener("dragover", (event) => {
      if (event.dataTransfer?.types.includes("Files")) event.preventDefault();
    });
    document.addEventListener("drop", (event) => {
      const file = event.dataTransfer?.files[0];
      if (!file) return;
      event.preventDefault();
      this.open();
      this.import(file);
    });
  }

  open() {
    this.showList();
    if (!this.ui.dialog.open) this.ui.dialog.showModal();
  }

  /** Open straight on the form for a new persona (from the start screen). */
  openNew() {
    this.open();
    this.edit(null);
  }

  render() {
    const own = this.roles().filter((role) => role.source === "user");
    this.ui.list.replaceChildren(...own.map((role) => this.item(role)));
    this.ui.empty.hidden = own.length > 0;
    this.ui.count.textContent = t("personasCount", { count: own.length, limit: this.limit() });
  }

  item(role) {
    const li = element("li", "persona-item");
    li.dataset.key = role.key;
    const text = element("div", "persona-item-text");
    text.append(element("span", "persona-item-name", role.name), element("span", "persona-item-description",
      role.description));
    const actions = element("div", "persona-item-actions");
    const button = (className, label, iconName, action) => {
      const el = element("button", `icon-button ${className}`);
      el.type = "button";
      el.title = label;
      el.setAttribute("aria-label", `${label}: ${role.name}`);
      el.append(icon(iconName));
      el.addEventListener("click", action);
      return el;
    };
    actions.append(
      button("persona-edit", t("editPersona"), "edit", () => this.edit(role.key)),
      button("persona-export", t("exportCard"), "download", () => this.export(role)),
      button("persona-delete", t("deletePersona"), "trash", (event) => this.remove(role, event.currentTarget)),
    );
    li.append(text, actions);
    return li;
  }

  showList() {
    this.editing = null;
    this.ui.form.hidden = true;
    this.ui.listView.hidden = false;
    this.setError(this.ui.error, "");
    this.render();
  }

  async edit(key) {
    const { ui } = this;
    let persona = { name: "", description: "", system_prompt: "", welcome_message: "", model: null, temperature: null };
    if (key) {
      try {
        persona = await call("GET", rolePath(key));
      } catch (error) {
        this.setError(ui.error, this.messageFor(error));
        return;
      }
    }
    this.editing = key || "";
    ui.formTitle.textContent = key ? t("editPersonaTitle", { name: persona.name }) : t("newPersona");
    ui.name.value = persona.name;
    ui.description.value = persona.description;
    ui.prompt.value = persona.system_prompt;
    ui.welcome.value = persona.welcome_message;
    ui.temperature.value = persona.temperature ?? "";
    ui.model.value = persona.model ?? "";
    this.setError(ui.formError, "");
    ui.listView.hidden = true;
    ui.form.hidden = false;
    ui.name.focus();
  }

  async save() {
    const { ui } = this;
    const temperature = ui.temperature.value.trim();
    const body = {
      name: ui.name.value,
      description: ui.description.value,
      system_prompt: ui.prompt.value,
      welcome_message: ui.welcome.value,
      model: ui.model.value.trim() || null,
      temperature: temperature === "" ? null : Number(temperature),
    };
    if (!body.name.trim() || !body.system_prompt.trim()) {
      this.setError(ui.formError, t("personaNeedsNameAndPrompt"));
      (body.name.trim() ? ui.prompt : ui.name).focus();
      return;
    }
    let saved;
    try {
      saved = this.editing
        ? await call("PUT", rolePath(this.editing), body)
        : await call("POST", "roles", body);
    } catch (error) {
      this.setError(ui.formError, this.explain(error));
      return;
    }
    toast(t(this.editing ? "personaSaved" : "personaCreated", { name: saved.name }));
    await this.onChange(saved);
    this.showList();
  }

  async remove(role, button) {
    const ok = await confirm({
      title: t("deletePersonaTitle"),
      body: t("deletePersonaBody", { name: role.name }),
      ok: t("deleteConfirmOk"),
    });
    if (!ok) {
      button.focus();
      return;
    }
    try {
      await call("DELETE", rolePath(role.key));
    } catch (error) {
      if (error.code !== "persona_not_found") {
        this.setError(this.ui.error, this.messageFor(error));
        return;
      }
    }
    toast(t("personaDeleted", { name: role.name }));
    await this.onChange(null);
    this.render();
  }

  async import(file) {
    this.showList();
    let persona;
    try {
      persona = await importFile(file);
    } catch (error) {
      this.setError(this.ui.error, this.explain(error));
      return;
    }
    toast(t("personaImported", { name: persona.name }));
    await this.onChange(persona);
    this.render();
  }

  async export(role) {
    let card;
    try {
      card = await call("GET", `${rolePath(role.key)}/card`);
    } catch (error) {
      this.setError(this.ui.error, this.messageFor(error));
      return;
    }
    const blob = new Blob([JSON.stringify(card, null, 2)], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const link = element("a");
    link.href = url;
    link.download = `${role.name.replace(/[^\p{L}\p{N}_ -]+/gu, "").trim() || "persona"}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  /** A 422 from the service names the problem (the field, or what is wrong with the card). */
  explain(error) {
    if ((error.code === "invalid_request" || error.code === "invalid_card") && error.message) {
      return t("personaInvalid", { detail: error.message });
    }
    return this.messageFor(error);
  }

  setError(box, message) {
    box.textContent = message;
    box.hidden = !message;
  }
}
