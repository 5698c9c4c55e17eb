// The sidebar: the person's chats (newest activity first), and on a narrow screen the
// drawer that holds them (opened with the menu button, closed with Esc, the scrim or a pick).

import { relativeTime, t } from "./i18n.js";
import { icon } from "./icons.js";
import { element } from "./conversation.js";

const NARROW = window.matchMedia("(max-width: 899px)");

export class Sidebar {
  constructor({ layout, sidebar, list, empty, menuButton, closeButton, scrim, onOpen, onDelete, personaName }) {
    Object.assign(this, { layout, sidebar, list, empty, menuButton, closeButton, scrim });
    this.onOpen = onOpen;
    this.onDelete = onDelete;
    this.personaName = personaName;
    this.sessions = [];
    this.currentId = null;
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
    const remove = element("button", "icon-button session-delete");
    remove.type = "button";
    remove.setAttribute("aria-label", t("deleteChatNamed", { title }));
    remove.title = t("deleteChat");
    remove.append(icon("trash"));
    remove.addEventListener("click", () => this.onDelete(session.session_id, title, remove));
    li.append(open, remove);
    return li;
  }
}
