// Small feedback for the person: a passing notice (toast), a confirmation dialog, and copying
// to the clipboard.

import { element } from "./conversation.js";
import { t } from "./i18n.js";
import { icon } from "./icons.js";

const $ = (id) => document.getElementById(id);

let toastTimer = 0;

/** A notice that goes away by itself (a polite status for screen readers). */
export function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    box.hidden = true;
  }, 4000);
}

/** Ask before something that cannot be undone; resolves to true when confirmed. Cancel has
 * the focus, so a stray Enter keeps things as they are. */
export function confirm({ title, body, ok }) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-body").textContent = body;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** Copy `text`, and show on `button` that it was copied. */
export async function copyText(text, button) {
  let copied = false;
  try {
    await navigator.clipboard.writeText(text);
    copied = true;
  } catch {
    copied = legacyCopy(text); // no clipboard API (plain http on another host)
  }
  if (!copied) {
    toast(t("copyFailed"));
    return;
  }
  const label = button.querySelector(".action-label");
  button.classList.add("is-copied");
  button.querySelector("svg")?.replaceWith(icon("check"));
  if (label) label.textContent = t("copied");
  else toast(t("copied"));
  setTimeout(() => {
    button.classList.remove("is-copied");
    button.querySelector("svg")?.replaceWith(icon("copy"));
    if (label) label.textContent = t("copy");
  }, 1500);
}

function legacyCopy(text) {
  const area = element("textarea", "visually-hidden");
  area.value = text;
  area.setAttribute("readonly", "");
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}
