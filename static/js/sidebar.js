// The sidebar: the person's chats (newest activity first), and on a narrow screen the
// drawer that holds them (opened with the menu button, closed with Esc, the scrim or a pick).
// A chat is renamed in place (Enter saves, Esc cancels); the search box above the list shows
// the chats whose title or messages match, with a snippet (a combobox: arrows move, Enter
// opens, Esc clears).

import { relativeTime, t } from "./i18n.js";
import { icon } from "./icons.js";
import { element } from "./conversation.js";

const NARROW = window.matchMedia("(max-width: 899px)");

export class Sidebar {
  constructor({ layout, sidebar, list, empty, menuButton, closeButton, scrim, onOpen, onDelete, personaName,
    onRename = async () => {}, search = null, searchInput = null, searchResults = null, searchEmpty = null }) {
    Object.assign(this, { layout, sidebar, list, empty, menuButton, closeButton, scrim });
    this.onOpen = onOpen;
    this.onDelete = onDelete;
    this.onRename = onRename;
    this.personaName = personaName;
    this.sessions = [];
    this.currentId = null;
    this.renamingId = null;
    if (search && searchInput) this.search = new SearchBox(this, search, searchInput, searchResults, searchEmpty);
    menuButton.addEventListener("click", () => this.openDrawer());
    closeButton.addEventListener("click", () => this.closeDrawer());
    scrim.addEventListener("click", () => this.closeDrawer());
    sidebar.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isDrawerOpen) {
        event.stopPropagation();
        this.closeDrawer();
      }
    });
    NARROW.addEventListener("change", () => this.syncDrawer());
    this.syncDrawer();
    // Relative times ("5 minutes ago") age: refresh them now and then.
    setInterval(() => this.render(), 60_000);
  }

  get isDrawerOpen() {
    return this.layout.classList.contains("sidebar-open");
  }

  openDrawer() {
    this.layout.classList.add("sidebar-open");
    this.syncDrawer();
    (this.list.querySelector("[aria-current] .session-open") || this.closeButton).focus();
  }

  closeDrawer({ restoreFocus = true } = {}) {
    if (!this.isDrawerOpen) return;
    this.layout.classList.remove("sidebar-open");
    this.syncDrawer();
    if (restoreFocus) this.menuButton.focus();
  }

  /** On a narrow screen a closed drawer is off-screen: keep it out of the tab order too. */
  syncDrawer() {
    const open = this.isDrawerOpen;
    const narrow = NARROW.matches;
    this.sidebar.inert = narrow && !open;
    this.scrim.hidden = !(narrow && open);
    this.menuButton.setAttribute("aria-expanded", String(narrow && open));
  }

  setSessions(sessions) {
    this.sessions = sessions;
    this.render();
  }

  setCurrent(sessionId) {
    this.currentId = sessionId;
    this.render();
  }

  render() {
    if (this.renamingId) return; // not under the person's typing; rendered when the rename ends
    const items = this.sessions.map((session) => this.item(session));
    this.list.replaceChildren(...items);
    this.empty.hidden = items.length > 0;
  }

  item(session) {
    const title = session.title || t("untitled");
    const li = element("li", "session");
    if (session.session_id === this.currentId) li.setAttribute("aria-current", "page");
    const open = element("button", "session-open");
    open.type = "button";
    open.dataset.sessionId = session.session_id;
    const name = element("span", "session-title", title);
    const meta = element("span", "session-meta");
    const parts = [this.personaName(session.role), relativeTime(session.last_activity)].filter(Boolean);
    meta.textContent = parts.join(" · ");
    if (session.last_activity) meta.title = new Date(session.last_activity).toLocaleString();
    open.append(name, meta);
    if (session.running_turn_id) {
      const dot = element("span", "session-busy");
      dot.setAttribute("aria-hidden", "true");
      open.append(dot);
    }
    open.addEventListener("click", () => {
      this.closeDrawer({ restoreFocus: false });
      this.onOpen(session.session_id);
    });
    const rename = element("button", "icon-button session-rename");
    rename.type = "button";
    rename.dataset.sessionId = session.session_id;
    rename.setAttribute("aria-label", t("renameChatNamed", { title }));
    rename.title = t("renameChat");
    rename.append(icon("edit"));
    rename.addEventListener("click", () => this.startRename(li, session, title));
    const remove = element("button", "icon-button session-delete");
    remove.type = "button";
    remove.setAttribute("aria-label", t("deleteChatNamed", { title }));
    remove.title = t("deleteChat");
    remove.append(icon("trash"));
    remove.addEventListener("click", () => this.onDelete(session.session_id, title, remove));
    li.append(open, rename, remove);
    return li;
  }

  /** The title becomes a text box: Enter saves it (PATCH), Esc or leaving it cancels. */
  startRename(li, session, title) {
    this.renamingId = session.session_id;
    const input = element("input", "session-rename-input");
    input.type = "text";
    input.maxLength = 200;
    input.value = session.title || "";
    input.placeholder = title;
    input.setAttribute("aria-label", t("renameLabel"));
    li.classList.add("is-renaming");
    li.replaceChildren(input);
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const value = input.value.trim();
      if (save && value && value !== session.title) {
        input.disabled = true;
        try {
          await this.onRename(session.session_id, value);
          session.title = value;
        } catch {
          // the page said why (a toast); the old title stays
        }
      }
      this.renamingId = null;
      this.render();
      this.list.querySelector(`.session-rename[data-session-id="${session.session_id}"]`)?.focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(false));
    input.focus();
    input.select();
  }
}

const SEARCH_DELAY_MS = 200;

/** The search box over the chat list, and its list of matches. */
class SearchBox {
  constructor(sidebar, search, input, results, empty) {
    Object.assign(this, { sidebar, search, input, results, empty });
    this.query = "";
    this.hits = [];
    this.active = -1;
    this.timer = 0;
    this.request = 0;
    input.setAttribute("role", "combobox");
    input.setAttribute("aria-controls", results.id);
    input.setAttribute("aria-autocomplete", "list");
    input.setAttribute("aria-expanded", "false");
    input.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.run(), SEARCH_DELAY_MS);
    });
    input.addEventListener("keydown", (event) => this.onKey(event));
  }

  get isOpen() {
    return this.query !== "";
  }

  onKey(event) {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      if (!this.hits.length) return;
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      this.setActive((this.active + step + this.hits.length) % this.hits.length);
    } else if (event.key === "Enter") {
      event.preventDefault();
      clearTimeout(this.timer);
      if (this.input.value.trim() !== this.query) this.run().then(() => this.pick(Math.max(this.active, 0)));
      else this.pick(Math.max(this.active, 0));
    } else if (event.key === "Escape" && this.input.value) {
      event.preventDefault();
      event.stopPropagation();
      this.clear();
    }
  }

  async run() {
    const query = this.input.value.trim().slice(0, 200);
    const request = ++this.request;
    if (!query) {
      this.clear({ keepInput: true });
      return;
    }
    let found;
    try {
      found = await this.search(query);
    } catch {
      return; // the list stays as it was; typing again searches again
    }
    if (request !== this.request) return;
    this.query = query;
    this.hits = found.results;
    this.render();
  }

  clear({ keepInput = false } = {}) {
    if (!keepInput) this.input.value = "";
    this.request += 1;
    this.query = "";
    this.hits = [];
    this.render();
  }

  render() {
    const open = this.isOpen;
    this.active = this.hits.length ? 0 : -1;
    this.results.hidden = !open || !this.hits.length;
    this.empty.hidden = !open || this.hits.length > 0;
    this.empty.textContent = open ? t("searchNoResults", { q: this.query }) : "";
    this.sidebar.sidebar.classList.toggle("is-searching", open);
    this.input.setAttribute("aria-expanded", String(open && this.hits.length > 0));
    this.results.replaceChildren(...this.hits.map((hit, index) => this.option(hit, index)));
    this.setActive(this.active);
  }

  option(hit, index) {
    const li = element("li", "search-result");
    li.id = `search-result-${index}`;
    li.setAttribute("role", "option");
    li.dataset.sessionId = hit.session_id;
    li.append(element("span", "search-title", hit.title || t("untitled")));
    const snippet = element("span", "search-snippet");
    snippet.append(...highlight(hit.snippet, this.query));
    li.append(snippet);
    li.addEventListener("mousedown", (event) => event.preventDefault()); // keep the focus in the box
    li.addEventListener("click", () => this.pick(index));
    return li;
  }

  setActive(index) {
    this.active = index;
    for (const [position, li] of [...this.results.children].entries()) {
      li.setAttribute("aria-selected", String(position === index));
      li.classList.toggle("is-active", position === index);
      if (position === index) li.scrollIntoView({ block: "nearest" });
    }
    if (index >= 0) this.input.setAttribute("aria-activedescendant", `search-result-${index}`);
    else this.input.removeAttribute("aria-activedescendant");
  }

  pick(index) {
    const hit = this.hits[index];
    if (!hit) return;
    this.sidebar.closeDrawer({ restoreFocus: false });
    this.sidebar.onOpen(hit.session_id, hit.turn_id);
  }
}

/** The snippet as text nodes, the query's matches in <mark> (case-insensitively). */
function highlight(text, query) {
  const nodes = [];
  const lower = text.toLowerCase();
  const needle = query.toLowerCase();
  let at = 0;
  while (needle) {
    const found = lower.indexOf(needle, at);
    if (found < 0 || lower.length !== text.length) break; // lengths differ: no safe positions
    if (found > at) nodes.push(document.createTextNode(text.slice(at, found)));
    nodes.push(element("mark", "", text.slice(found, found + needle.length)));
    at = found + needle.length;
  }
  nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}
