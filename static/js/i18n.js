// Every string the page shows, one table per language, and the helpers that put them in place.
//
// The page follows the browser's language (navigator.languages) until the person picks one in
// the language switch; that choice is kept in localStorage. A key missing from a table falls
// back to English, so a half-translated table never shows a raw key.

import { safeStorage } from "./saved.js";

const en = {
  appName: "Persona chat",
  skipToInput: "Skip to the message box",
  openMenu: "Open the chat list",
  closeMenu: "Close the chat list",
  newChat: "New chat",
  yourChats: "Your chats",
  noChatsYet: "No chats yet. Say hello!",
  untitled: "New chat",
  language: "Language",
  deleteChat: "Delete chat",
  deleteChatNamed: "Delete chat “{title}”",
  clearChat: "Clear",
  conversation: "Conversation",
  persona: "Persona",
  model: "Model",
  modelLabel: "Written by {model}",
  tokenUsage: "{prompt} prompt + {completion} answer tokens",
  personaFor: "Answers as {name}",
  welcomeTitle: "Who would you like to talk to?",
  welcomeLead: "Pick a persona, then type your message below. You can switch persona at any time.",
  messageLabel: "Message",
  placeholder: "Message {name}…",
  placeholderDefault: "Type a message…",
  composerHint: "Enter to send · Shift+Enter for a new line",
  send: "Send",
  stop: "Stop",
  waitForAnswer: "Wait for the answer to finish, or stop it (Esc).",
  jumpToLatest: "Latest",
  you: "You",
  thinking: "Thinking…",
  stopped: "Stopped",
  stoppedAnnounce: "The answer was stopped.",
  answerDone: "Answer complete.",
  copy: "Copy",
  copied: "Copied",
  copyCode: "Copy code",
  copyAnswer: "Copy answer",
  copyFailed: "Could not copy to the clipboard.",
  retry: "Try again",
  cancel: "Cancel",
  deleteConfirmTitle: "Delete this chat?",
  deleteConfirmBody: "“{title}” and all its messages will be deleted. This cannot be undone.",
  deleteConfirmOk: "Delete",
  clearConfirmTitle: "Clear this chat?",
  clearConfirmBody: "All messages in this chat will be removed. The chat itself stays in your list.",
  clearConfirmOk: "Clear",
  chatDeleted: "Chat deleted.",
  chatCleared: "Chat cleared.",
  chatGone: "That chat no longer exists, so a new one was started.",
  demoTitle: "Offline demo model.",
  demoBody: "No real model is configured, so answers are made up locally. To chat with a real model, set `OPENAI_API_KEY` (or `OPENAI_BASE_URL` and `OPENAI_MODEL` for another provider) and restart the server.",
  loadFailed: "Could not load this chat.",
  justNow: "just now",
  // Why a turn failed, in words a person understands, by the service's error `code`.
  err_upstream_auth: "The AI model is not set up correctly: the server's API key was refused. Ask whoever runs this server to check OPENAI_API_KEY.",
  err_rate_limited: "You are sending messages too quickly. Please wait a moment and try again.",
  err_rate_limited_wait: "You are sending messages too quickly. Please try again in {seconds} s.",
  err_upstream_rate_limited: "The AI model is busy right now (its provider is limiting requests). Please try again in a moment.",
  err_upstream_unreachable: "The AI model could not be reached. Check the server's connection, then try again.",
  err_upstream_timeout: "The AI model took too long to answer. Please try again.",
  err_turn_timeout: "The answer took too long and was cut off. Please try again, perhaps with a shorter question.",
  err_upstream_stream_cut: "The connection to the AI model broke off in the middle of the answer. Please try again.",
  err_upstream_error: "The AI model ran into a problem and could not answer. Please try again.",
  err_upstream_bad_request: "The AI model refused this request. Try rephrasing your message.",
  err_upstream_bad_response: "The AI model sent an answer this server could not read. Please try again.",
  err_model_not_found: "The AI model set up on this server was not found. Ask whoever runs it to check OPENAI_MODEL and OPENAI_BASE_URL.",
  err_server_shutdown: "The server is restarting. Please send your message again in a moment.",
  err_turn_lost: "The server that was writing this answer stopped. Please send your message again.",
  err_store_unavailable: "The chat history storage is unavailable right now. Please try again shortly.",
  err_internal_error: "Something went wrong on our side. Please try again.",
  err_turn_in_progress: "An answer is still being written in this chat (perhaps in another tab). Wait for it or stop it, then try again.",
  err_message_too_long: "Your message is too long. Please shorten it and try again.",
  err_invalid_request: "This message could not be sent. Please check it and try again.",
  err_empty_message: "The message is empty.",
  err_session_not_found: "This chat no longer exists. Start a new chat to continue.",
  err_turn_not_found: "This answer is no longer available.",
  err_unknown_role: "That persona no longer exists. Pick another one and try again.",
  err_not_authenticated: "You are not signed in to this server.",
  err_network: "Could not reach the server. Check your connection and try again.",
  err_no_answer: "This message did not get an answer. Send it again?",
  err_unknown: "Something went wrong. Please try again.",
  // Personas of one's own: the editor.
  createPersona: "Create a persona",
  managePersonas: "Your personas",
  personasTitle: "Your personas",
  personasLead: "Personas you made or imported. Only you can see and use them.",
  personasCount: "({count} of {limit})",
  personasEmpty: "You have no personas of your own yet.",
  dropCard: "Create one, or import a character card (JSON or PNG, as SillyTavern makes them): pick the file or drop it here.",
  newPersona: "New persona",
  importCard: "Import a card…",
  personaName: "Name",
  personaSummary: "Short description (shown in the persona menu)",
  personaPrompt: "System prompt: who the persona is and how it answers",
  personaWelcome: "Welcome message (shown when a chat starts)",
  personaTemperature: "Temperature (0–2)",
  personaModel: "Model",
  personaDefault: "default",
  save: "Save",
  close: "Close",
  editPersona: "Edit",
  exportCard: "Export as a character card",
  deletePersona: "Delete",
  editPersonaTitle: "Edit “{name}”",
  personaNeedsNameAndPrompt: "A persona needs a name and a system prompt.",
  personaSaved: "“{name}” saved.",
  personaCreated: "“{name}” created.",
  personaImported: "“{name}” imported.",
  personaDeleted: "“{name}” deleted.",
  deletePersonaTitle: "Delete this persona?",
  deletePersonaBody: "“{name}” will be deleted. Chats with it go on with the default persona. This cannot be undone.",
  personaInvalid: "This cannot be saved: {detail}",
  yours: "Yours",
  yourPersonas: "Your personas",
  sharedPersonas: "Personas",
  personaGone: "The persona of this chat was deleted, so it goes on with {name}.",
  deletedPersona: "Deleted persona",
  err_persona_not_found: "That persona no longer exists.",
  err_too_many_personas: "You have as many personas as you may keep. Delete one to make room.",
  err_read_only: "Built-in personas cannot be changed.",
  err_invalid_card: "This file is not a character card that can be read.",
  // Rewriting the conversation, renaming and finding chats.
  regenerate: "Regenerate",
  editMessage: "Edit message",
  editEarlierTitle: "Edit this earlier message?",
  editEarlierBody: "The messages after it will be removed when you send the edited message.",
  editEarlierOk: "Edit",
  renameChat: "Rename chat",
  renameChatNamed: "Rename chat “{title}”",
  renameLabel: "New name for the chat (Enter to save, Esc to cancel)",
  chatRenamed: "Chat renamed.",
  searchChats: "Search chats",
  searchResults: "Chats that match",
  searchNoResults: "No chats match “{q}”.",
};

const zhCN = {
  appName: "角色聊天",
  skipToInput: "跳到输入框",
  openMenu: "打开聊天列表",
  closeMenu: "关闭聊天列表",
  newChat: "新建聊天",
  yourChats: "我的聊天",
  noChatsYet: "还没有聊天，打个招呼吧！",
  untitled: "新聊天",
  language: "语言",
  deleteChat: "删除聊天",
  deleteChatNamed: "删除聊天“{title}”",
  clearChat: "清空",
  conversation: "对话",
  persona: "角色",
  model: "模型",
  modelLabel: "由 {model} 生成",
  tokenUsage: "提示 {prompt} + 回答 {completion} 个 token",
  personaFor: "由{name}回答",
  welcomeTitle: "想和谁聊天？",
  welcomeLead: "选择一个角色，然后在下方输入消息。随时都可以切换角色。",
  messageLabel: "消息",
  placeholder: "给{name}发消息…",
  placeholderDefault: "输入消息…",
  composerHint: "Enter 发送 · Shift+Enter 换行",
  send: "发送",
  stop: "停止",
  waitForAnswer: "请等待回答完成，或停止它（Esc）。",
  jumpToLatest: "最新",
  you: "你",
  thinking: "思考中…",
  stopped: "已停止",
  stoppedAnnounce: "回答已停止。",
  answerDone: "回答完成。",
  copy: "复制",
  copied: "已复制",
  copyCode: "复制代码",
  copyAnswer: "复制回答",
  copyFailed: "无法复制到剪贴板。",
  retry: "重试",
  cancel: "取消",
  deleteConfirmTitle: "删除这个聊天？",
  deleteConfirmBody: "“{title}”及其所有消息都将被删除，且无法恢复。",
  deleteConfirmOk: "删除",
  clearConfirmTitle: "清空这个聊天？",
  clearConfirmBody: "这个聊天中的所有消息都将被移除，聊天本身仍保留在列表中。",
  clearConfirmOk: "清空",
  chatDeleted: "聊天已删除。",
  chatCleared: "聊天已清空。",
  chatGone: "该聊天已不存在，已为你新建一个聊天。",
  demoTitle: "离线演示模型。",
  demoBody: "尚未配置真实模型，回答是在本地生成的示例。要与真实模型聊天，请设置 `OPENAI_API_KEY`（或为其他服务商设置 `OPENAI_BASE_URL` 和 `OPENAI_MODEL`），然后重启服务器。",
  loadFailed: "无法加载这个聊天。",
  justNow: "刚刚",
  err_upstream_auth: "AI 模型配置有误：服务器的 API 密钥被拒绝。请联系服务器管理员检查 OPENAI_API_KEY。",
  err_rate_limited: "你发送消息太快了，请稍等片刻再试。",
  err_rate_limited_wait: "你发送消息太快了，请在 {seconds} 秒后再试。",
  err_upstream_rate_limited: "AI 模型现在很忙（服务商正在限制请求），请稍后再试。",
  err_upstream_unreachable: "无法连接到 AI 模型。请检查服务器的网络连接，然后重试。",
  err_upstream_timeout: "AI 模型响应超时，请重试。",
  err_turn_timeout: "回答用时过长，已被中断。请重试，或者把问题问得简短一些。",
  err_upstream_stream_cut: "与 AI 模型的连接在回答中途断开了，请重试。",
  err_upstream_error: "AI 模型出现问题，无法回答，请重试。",
  err_upstream_bad_request: "AI 模型拒绝了这个请求，请换个说法试试。",
  err_upstream_bad_response: "AI 模型返回了服务器无法识别的内容，请重试。",
  err_model_not_found: "找不到服务器上配置的 AI 模型。请联系服务器管理员检查 OPENAI_MODEL 和 OPENAI_BASE_URL。",
  err_server_shutdown: "服务器正在重启，请稍后重新发送消息。",
  err_turn_lost: "正在生成这个回答的服务器停止了，请重新发送消息。",
  err_store_unavailable: "聊天记录存储暂时不可用，请稍后再试。",
  err_internal_error: "服务器内部出错了，请重试。",
  err_turn_in_progress: "这个聊天中还有一个回答正在生成（可能在另一个标签页中）。请等待它完成或停止它，然后重试。",
  err_message_too_long: "消息太长了，请缩短后重试。",
  err_invalid_request: "这条消息无法发送，请检查后重试。",
  err_empty_message: "消息是空的。",
  err_session_not_found: "这个聊天已不存在，请新建一个聊天继续。",
  err_turn_not_found: "这个回答已无法获取。",
  err_unknown_role: "该角色已不存在，请选择其他角色后重试。",
  err_not_authenticated: "你尚未登录此服务器。",
  err_network: "无法连接到服务器。请检查网络连接后重试。",
  err_no_answer: "这条消息没有得到回答，要重新发送吗？",
  err_unknown: "出错了，请重试。",
  createPersona: "创建角色",
  managePersonas: "我的角色",
  personasTitle: "我的角色",
  personasLead: "你创建或导入的角色，只有你能看到和使用。",
  personasCount: "（{count}/{limit}）",
  personasEmpty: "你还没有自己的角色。",
  dropCard: "新建一个角色，或导入角色卡（SillyTavern 格式的 JSON 或 PNG）：选择文件，或把文件拖到这里。",
  newPersona: "新建角色",
  importCard: "导入角色卡…",
  personaName: "名称",
  personaSummary: "简短介绍（显示在角色菜单中）",
  personaPrompt: "系统提示词：角色是谁、如何回答",
  personaWelcome: "欢迎语（开始聊天时显示）",
  personaTemperature: "温度（0–2）",
  personaModel: "模型",
  personaDefault: "默认",
  save: "保存",
  close: "关闭",
  editPersona: "编辑",
  exportCard: "导出为角色卡",
  deletePersona: "删除",
  editPersonaTitle: "编辑“{name}”",
  personaNeedsNameAndPrompt: "角色需要名称和系统提示词。",
  personaSaved: "“{name}”已保存。",
  personaCreated: "“{name}”已创建。",
  personaImported: "“{name}”已导入。",
  personaDeleted: "“{name}”已删除。",
  deletePersonaTitle: "删除这个角色？",
  deletePersonaBody: "“{name}”将被删除，使用它的聊天会改用默认角色继续。此操作无法撤销。",
  personaInvalid: "无法保存：{detail}",
  yours: "我的",
  yourPersonas: "我的角色",
  sharedPersonas: "角色",
  personaGone: "这个聊天的角色已被删除，将由{name}继续。",
  deletedPersona: "已删除的角色",
  err_persona_not_found: "该角色已不存在。",
  err_too_many_personas: "你的角色数量已达上限，请先删除一个。",
  err_read_only: "内置角色无法修改。",
  err_invalid_card: "这个文件不是可读取的角色卡。",
  regenerate: "重新生成",
  editMessage: "编辑消息",
  editEarlierTitle: "编辑这条较早的消息？",
  editEarlierBody: "发送编辑后的消息时，它之后的消息将被删除。",
  editEarlierOk: "编辑",
  renameChat: "重命名聊天",
  renameChatNamed: "重命名聊天“{title}”",
  renameLabel: "聊天的新名称（回车保存，Esc 取消）",
  chatRenamed: "聊天已重命名。",
  searchChats: "搜索聊天",
  searchResults: "匹配的聊天",
  searchNoResults: "没有与“{q}”匹配的聊天。",
};

export const LANGUAGES = { en, "zh-CN": zhCN };
const STORAGE_KEY = "personachat.language";

let current = "en";

/** The language to use: the person's choice, else the browser's first supported language. */
export function detectLanguage() {
  const saved = safeStorage(() => localStorage.getItem(STORAGE_KEY));
  if (saved && saved in LANGUAGES) return saved;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const lower = String(tag).toLowerCase();
    if (lower.startsWith("zh")) return "zh-CN";
    if (lower.startsWith("en")) return "en";
  }
  return "en";
}

export function setLanguage(lang, { remember = false } = {}) {
  current = lang in LANGUAGES ? lang : "en";
  if (remember) safeStorage(() => localStorage.setItem(STORAGE_KEY, current));
  document.documentElement.lang = current;
  applyTranslations(document);
}

export function language() {
  return current;
}

/** The string for `key` in the current language, with `{name}` placeholders filled in. */
export function t(key, vars = {}) {
  const text = LANGUAGES[current][key] ?? en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (match, name) => (name in vars ? String(vars[name]) : match));
}

export function hasKey(key) {
  return key in en;
}

/** Fill elements marked with data-i18n (text), data-i18n-placeholder, -title and -aria-label. */
export function applyTranslations(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    if (el.hasAttribute("data-i18n-rich")) setRichText(el, t(el.dataset.i18n));
    else el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
  document.title = t("appName");
}

/** Text whose `backquoted` parts are shown as code (names of settings), built without markup. */
function setRichText(el, text) {
  el.replaceChildren(
    ...text.split("`").map((part, index) => {
      if (index % 2 === 0) return document.createTextNode(part);
      const code = document.createElement("code");
      code.textContent = part;
      return code;
    }),
  );
}

/** "5 minutes ago" in the current language, from an ISO timestamp. */
export function relativeTime(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const seconds = Math.round((then - now) / 1000);
  if (Math.abs(seconds) < 45) return t("justNow");
  const format = new Intl.RelativeTimeFormat(current, { numeric: "auto" });
  const steps = [
    [60, "second"],
    [60, "minute"],
    [24, "hour"],
    [7, "day"],
    [4.35, "week"],
    [12, "month"],
    [Infinity, "year"],
  ];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return format.format(Math.round(value), unit);
    value /= size;
  }
  return "";
}
