// stream.js: stream a reply from the function into a page, with no dependencies.
//
//   import { streamText } from "/stream.js";
//   const stop = new AbortController();
//   const text = await streamText("/api/generate", { prompt: "Hi" },
//                                 { onText: (delta) => out.append(delta), signal: stop.signal });
//
// Reads all three output formats: OpenAI-compatible SSE (chat or completion chunks), the AI SDK
// UI message stream (`?format=ui`) and plain text (`?format=text`). Decoding is incremental
// (TextDecoder with {stream: true}, so a character split across reads comes out whole), and the
// SSE parser follows the WHATWG rules: CR, LF and CRLF line ends, multi-line data, comments
// (keep-alives) and unknown fields ignored, an unterminated last event discarded.
// Errors reject the returned promise with a StreamError: an HTTP error (its JSON message), an
// in-band error event, or a stream that ended before its end marker (an incomplete answer).
// Aborting the signal cancels the request and rejects with the fetch's AbortError.

export class StreamError extends Error {
  constructor(message, { status = 0, type = "stream_error" } = {}) {
    super(message);
    this.name = "StreamError";
    this.status = status;
    this.type = type;
  }
}

/** Incremental SSE parser: push(text) returns the data of the events that text completed. */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.sawData = false;
    this.pendingCR = false;
  }

  push(text) {
    const events = [];
    let buf = this.buffer + text;
    if (this.pendingCR && buf.startsWith("\n")) buf = buf.slice(1); // CRLF split across reads
    this.pendingCR = false;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(buf.slice(start, i), events);
      if (c === 13) {
        if (i + 1 === buf.length) this.pendingCR = true;
        else if (buf.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.buffer = buf.slice(start);
    return events;
  }

  line(line, events) {
    if (line === "") {
      if (this.sawData) events.push(this.data.join("\n"));
      this.data = [];
      this.sawData = false;
      return;
    }
    if (line.startsWith(":")) return; // a comment: keep-alive
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") {
      this.data.push(value);
      this.sawData = true;
    } // event, id, retry and unknown fields do not matter here
  }
}

/** The text one event adds, or null when the event ends the stream. Throws on an error event. */
function textOfEvent(data) {
  if (data === "[DONE]") return null;
  const event = JSON.parse(data);
  if (event.error) {
    const err = event.error;
    throw new StreamError(err.message || "The stream failed.", { type: err.type || "error" });
  }
  if (typeof event.type === "string") {
    // AI SDK UI message stream
    if (event.type === "text-delta") return event.delta;
    if (event.type === "error") throw new StreamError(event.errorText);
    return "";
  }
  const choice = event.choices && event.choices[0];
  if (!choice) return ""; // e.g. the usage chunk
  if (choice.delta) return choice.delta.content || "";
  return choice.text || "";
}

async function httpError(response) {
  const body = await response.text();
  try {
    const { error } = JSON.parse(body);
    return new StreamError(error.message, { status: response.status, type: error.type });
  } catch {
    return new StreamError(`HTTP ${response.status}: ${body.slice(0, 200)}`, {
      status: response.status,
    });
  }
}

/**
 * POST `body` as JSON to `url` and call `onText(delta)` for every piece of text as it arrives.
 * Resolves with the whole text once the stream ended cleanly.
 */
export async function streamText(url, body, { onText = () => {}, signal, headers = {} } = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await httpError(response);
  const sse = (response.headers.get("content-type") || "").startsWith("text/event-stream");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  let text = "";
  const emit = (delta) => {
    if (!delta) return;
    text += delta;
    onText(delta);
  };
  try {
    for (;;) {
      const { value, done } = await reader.read(); // a broken connection rejects here
      if (done) break;
      const chunk = decoder.decode(value, { stream: true });
      if (!sse) {
        emit(chunk);
        continue;
      }
      for (const data of parser.push(chunk)) {
        const delta = textOfEvent(data);
        if (delta === null) return text;
        emit(delta);
      }
    }
  } catch (error) {
    reader.cancel().catch(() => {}); // hang up: no more of this answer is wanted
    if (error instanceof StreamError || error.name === "AbortError") throw error;
    if (error instanceof SyntaxError) throw new StreamError("The stream sent malformed JSON.");
    throw new StreamError("The connection broke; the answer is incomplete.");
  }
  if (sse) throw new StreamError("The stream ended before it was complete.");
  emit(decoder.decode());
  return text;
}
