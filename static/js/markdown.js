// Markdown answers to safe, highlighted HTML, re-rendered block by block as they stream in.
//
// Safety: the model's text is untrusted. Raw HTML in it is shown as text (the `html`
// renderer escapes it), images become plain links (no tracking pixels, and the page's CSP
// would refuse them anyway), and everything marked produces still goes through DOMPurify,
// which drops scripts, event handlers, `javascript:` URLs, inline styles and ids. Links open
// in a new tab with rel="noopener noreferrer".
//
// Speed: a streamed answer is re-rendered at most once per animation frame (the caller
// schedules it), and only the top-level blocks whose source changed are parsed, sanitised
// and highlighted again; earlier paragraphs and code blocks keep their DOM, so a long
// answer costs about the same per frame as a short one, and text stays selectable.

import { Marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import hljs from "../vendor/highlight/highlight.min.js";

const PURIFY_CONFIG = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "img", "form", "input", "button", "textarea", "select", "option", "iframe", "frame",
    "object", "embed", "video", "audio", "source", "picture", "svg", "math", "link", "meta", "base"],
  FORBID_ATTR: ["style", "id", "name", "srcset", "formaction", "autofocus", "tabindex"],
  ALLOW_DATA_ATTR: false,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    } else {
      node.removeAttribute("target");
    }
  }
});

const highlightCache = new Map();
const HIGHLIGHT_CACHE_SIZE = 300;
let autoDetect = false; // guessing a language is slow: only for a finished answer

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function highlight(code, lang) {
  const language = lang && hljs.getLanguage(lang) ? lang : "";
  const key = `${language || (autoDetect ? "?" : "")}\u0000${code}`;
  const cached = highlightCache.get(key);
  if (cached) return cached;
  let result;
  if (language) {
    result = { html: hljs.highlight(code, { language, ignoreIllegals: true }).value, language };
  } else if (autoDetect && code.length < 20_000) {
    const guess = hljs.highlightAuto(code);
    result = { html: guess.value, language: guess.relevance >= 5 ? guess.language || "" : "" };
    if (!result.language) result.html = escapeHtml(code);
  } else {
    result = { html: escapeHtml(code), language: "" };
  }
  if (highlightCache.size >= HIGHLIGHT_CACHE_SIZE) highlightCache.delete(highlightCache.keys().next().value);
  highlightCache.set(key, result);
  return result;
}

const marked = new Marked({ gfm: true, breaks: false });
marked.use({
  renderer: {
    html({ text, block }) {
      return block ? `<p>${escapeHtml(text.trim())}</p>\n` : escapeHtml(text);
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
    code({ text, lang }) {
      const named = (lang || "").trim().split(/\s+/)[0].toLowerCase();
      const { html, language } = highlight(text.replace(/\n$/, ""), named);
      const label = language || named;
      const cls = label ? ` language-${escapeHtml(label.replace(/[^\w+#-]/g, ""))}` : "";
      return `<pre><code class="hljs${cls}">${html}</code></pre>\n`;
    },
  },
});

export function renderMarkdownHtml(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY_CONFIG);
}

/**
 * A rendered Markdown document inside `container`, updated in place with `render(text)`.
 * `decorate(blockElement)` adds page chrome to a freshly rendered block (copy buttons);
 * `onBlockDone(blockElement)` is told once about each block that is complete.
 */
export class MarkdownView {
  constructor(container, { decorate = () => {}, onBlockDone = () => {} } = {}) {
    this.container = container;
    this.decorate = decorate;
    this.onBlockDone = onBlockDone;
    this.blocks = []; // [{ raw, el }]
    this.announced = 0;
    this.renders = 0;
  }

  render(text, { final = false } = {}) {
    this.renders += 1;
    const tokens = marked.lexer(text);
    const links = tokens.links || {};
    const hasLinks = Object.keys(links).length > 0;
    const blocks = tokens.filter((token) => token.type !== "space" && token.type !== "def");
    autoDetect = final;
    try {
      blocks.forEach((token, index) => {
        const old = this.blocks[index];
        // A finished answer re-renders what can depend on later text: reference links,
        // and code blocks with no language named (their language is guessed now).
        const redo = final && (hasLinks || (token.type === "code" && !token.lang));
        if (old && old.raw === token.raw && !redo) return;
        const list = [token];
        list.links = links;
        const el = document.createElement("div");
        el.className = "md-block";
        el.innerHTML = DOMPurify.sanitize(marked.parser(list), PURIFY_CONFIG);
        this.decorate(el);
        if (old) old.el.replaceWith(el);
        else this.container.append(el);
        this.blocks[index] = { raw: token.raw, el };
      });
    } finally {
      autoDetect = false;
    }
    for (const stale of this.blocks.splice(blocks.length)) stale.el.remove();
    const done = final ? this.blocks.length : Math.max(0, this.blocks.length - 1);
    for (; this.announced < done; this.announced += 1) this.onBlockDone(this.blocks[this.announced].el);
  }
}
