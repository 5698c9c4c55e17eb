// One turn's answer as a stream of events: EventSource first, fetch() when EventSource cannot.
//
// Protocol (API.md): `data:` holds JSON with `type` start/chunk/end/error, and every event has
// an `id:`. We close the stream ourselves on `end` or `error`: otherwise EventSource would
// reconnect, and the server would answer that resume with 204.
//
// - A connection that drops mid-answer is left to EventSource: it reconnects with
//   Last-Event-ID and the server resumes the turn after that event, without duplicates.
// - EventSource cannot read an HTTP error body. When it fails before the first event (409 a
//   turn is running, 429 rate limited, 404, 413/422, 503, or the network), the same request
//   is sent again with fetch(): an error answer is then read as JSON `{code, detail}` (and
//   Retry-After), and a 200 answer is read as the stream itself, so nothing is sent twice.
// - A message too long for a URL goes with fetch() POST /chat/stream from the start.
// - Every send carries its `client_message_id` (and `from_turn` when it rewrites the
//   conversation): a send repeated after a network error, by the fallback above or by the
//   person's Retry, replays the turn the first one started instead of sending it twice.

import { ApiError, errorFromResponse } from "./api.js";

const MAX_URL_LENGTH = 6000;
const FETCH_RESUMES = 3;

/**
 * Send `message` (or resume the turn after the event id `resumeFrom`) and call the handlers:
 * onStart(event), onChunk(text), onEnd(event), onError(ApiError-like {code, status, detail,
 * retryAfter}), onLost() when the stream ended with no final event and cannot be resumed.
 * Returns an object whose close() stops listening (the turn itself goes on, on the server).
 */
export function streamTurn(params, handlers) {
  const stream = new TurnStream(params, handlers);
  stream.open();
  return stream;
}

class TurnStream {
  constructor(
    { sessionId, message = null, role = null, resumeFrom = null, fromTurn = null, clientMessageId = null, model = null },
    handlers,
  ) {
    this.sessionId = sessionId;
    this.message = message;
    this.role = role;
    this.fromTurn = fromTurn;
    this.clientMessageId = clientMessageId;
    this.model = model;
    this.handlers = handlers;
    this.lastId = resumeFrom;
    this.received = 0;
    this.finished = false;
    this.source = null;
    this.abort = null;
  }

  open() {
    const url = this.url();
    if (this.lastId === null && url.href.length > MAX_URL_LENGTH) {
      this.viaFetch();
      return;
    }
    const source = new EventSource(url);
    this.source = source;
    source.onmessage = (event) => this.deliver(event.data, event.lastEventId);
    source.onerror = () => {
      if (this.finished) return;
      if (this.received === 0) {
        // Refused before streaming (or unreachable): ask again with fetch to learn why.
        source.close();
        this.source = null;
        this.viaFetch();
      } else if (source.readyState === EventSource.CLOSED) {
        // The server will not resume (204 after the turn's end, or an error status).
        this.finish();
        this.handlers.onLost();
      }
      // Otherwise CONNECTING: the browser reconnects with Last-Event-ID; let it.
    };
  }

  /** Stop listening, without stopping the turn on the server. */
  close() {
    this.finish();
  }

  url() {
    const url = new URL("chat/stream", document.baseURI);
    url.searchParams.set("session_id", this.sessionId);
    if (this.lastId !== null) {
      url.searchParams.set("last_event_id", this.lastId);
    } else {
      url.searchParams.set("message", this.message);
      if (this.role) url.searchParams.set("role", this.role);
      if (this.fromTurn) url.searchParams.set("from_turn", this.fromTurn);
      if (this.clientMessageId) url.searchParams.set("client_message_id", this.clientMessageId);
      if (this.model) url.searchParams.set("model", this.model);
    }
    return url;
  }

  finish() {
    this.finished = true;
    if (this.source) this.source.close();
    this.source = null;
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  deliver(raw, id) {
    if (this.finished) return;
    let event;
    try {
      event = JSON.parse(raw);
    } catch {
      return; // not one of ours; the protocol sends JSON only
    }
    this.received += 1;
    if (id) this.lastId = id;
    switch (event.type) {
      case "start":
        this.handlers.onStart(event);
        break;
      case "chunk":
        this.handlers.onChunk(typeof event.content === "string" ? event.content : "");
        break;
      case "end":
        this.finish();
        this.handlers.onEnd(event);
        break;
      case "error":
        this.finish();
        this.handlers.onError({ status: 200, code: event.code || "internal_error", detail: event.content });
        break;
      default:
        break; // a newer server's event type: ignore it
    }
  }

  /** The fetch() path: the first request, or the retry of a refused EventSource request. */
  async viaFetch() {
    let resumes = 0;
    while (!this.finished) {
      const controller = new AbortController();
      this.abort = controller;
      let response;
      try {
        response = await fetch(this.fetchUrl(), { ...this.fetchInit(), signal: controller.signal });
      } catch {
        if (this.finished) return;
        if (this.received > 0 && resumes < FETCH_RESUMES) {
          resumes += 1;
          await sleep(500 * resumes);
          continue;
        }
        this.finish();
        this.handlers.onError(new ApiError(0, "network", "network error"));
        return;
      }
      if (this.finished) return;
      if (response.status === 204) {
        this.finish();
        this.handlers.onLost();
        return;
      }
      if (!response.ok) {
        const error = await errorFromResponse(response);
        this.finish();
        this.handlers.onError(error);
        return;
      }
      try {
        await this.readBody(response);
      } catch {
        // the connection dropped: resume below after the last event seen
      }
      if (this.finished) return;
      if (this.lastId === null || resumes >= FETCH_RESUMES) {
        this.finish();
        this.handlers.onLost();
        return;
      }
      resumes += 1;
    }
  }

  fetchUrl() {
    const url = new URL("chat/stream", document.baseURI);
    if (this.lastId !== null) url.searchParams.set("session_id", this.sessionId);
    return url;
  }

  fetchInit() {
    const headers = { Accept: "text/event-stream" };
    if (this.lastId !== null) {
      return { method: "GET", headers: { ...headers, "Last-Event-ID": this.lastId }, credentials: "same-origin" };
    }
    const body = { session_id: this.sessionId, message: this.message };
    if (this.role) body.role = this.role;
    if (this.fromTurn) body.from_turn = this.fromTurn;
    if (this.clientMessageId) body.client_message_id = this.clientMessageId;
    if (this.model) body.model = this.model;
    return {
      method: "POST",
      headers: { ...headers, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    };
  }

  async readBody(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let boundary;
      while ((boundary = /\r\n\r\n|\n\n|\r\r/.exec(buffer)) !== null) {
        const block = buffer.slice(0, boundary.index);
        buffer = buffer.slice(boundary.index + boundary[0].length);
        this.parseBlock(block);
        if (this.finished) {
          reader.cancel().catch(() => {});
          return;
        }
      }
    }
  }

  parseBlock(block) {
    let id = "";
    const data = [];
    for (const line of block.split(/\r\n|\n|\r/)) {
      if (line === "" || line.startsWith(":")) continue; // comments are keep-alive pings
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (data.length) this.deliver(data.join("\n"), id);
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A new client_message_id: 32 random hex digits. */
export function newClientMessageId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}
