// stream.js: stream a reply from the function into a page, with no dependencies.
//
//   import { streamText } from "/stream.js";
//   const stop = new AbortController();
//   const text = await streamText("/api/generate", { prompt: "Hi" },
//                                 { onText: (delta) => out.append(delta), signal: stop.signal });
//
// Reads all three output formats: OpenAI-compatible SSE (chat or completion chunks), the AI SDK
// UI message stream (`?format=ui`) and plain text (`?format=text`), with the reasoning and tool
// calls of the first two (onReasoning, onToolStart, onToolDelta, onToolCall). Decoding is incremental
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

/**
 * Feeds one event to the sink (text, reasoning, tool calls); false when it ends the stream.
 * Throws on an error event. Tool calls come whole to onToolCall({id, name, input}), after
 * onToolStart({id, name}) and onToolDelta({id, delta}) while their arguments stream.
 */
function handleEvent(data, sink) {
  if (data === "[DONE]") {
    sink.finishTools();
    return false;
  }
  const event = JSON.parse(data);
  if (event.error) {
    const err = event.error;
    throw new StreamError(err.message || "The stream failed.", { type: err.type || "error" });
  }
  if (typeof event.type === "string") {
    // AI SDK UI message stream
    const t = event.type;
    if (t === "text-delta") sink.text(event.delta);
    else if (t === "reasoning-delta") sink.onReasoning(event.delta);
    else if (t === "tool-input-start") sink.onToolStart({ id: event.toolCallId, name: event.toolName });
    else if (t === "tool-input-delta") sink.onToolDelta({ id: event.toolCallId, delta: event.inputTextDelta });
    else if (t === "tool-input-available") {
      sink.onToolCall({ id: event.toolCallId, name: event.toolName, input: event.input });
    } else if (t === "tool-input-error") {
      throw new StreamError(`The model called ${event.toolName} with input that is not JSON.`);
    } else if (t === "error") throw new StreamError(event.errorText);
    return true;
  }
  const choice = event.choices && event.choices[0];
  if (!choice) return true; // e.g. the usage chunk
  const delta = choice.delta;
  if (!delta) {
    sink.text(choice.text || "");
    return true;
  }
  const thought = delta.reasoning_content || delta.reasoning;
  if (typeof thought === "string" && thought) sink.onReasoning(thought);
  sink.text(delta.content || "");
  for (const call of delta.tool_calls || []) sink.toolFragment(call);
  if (choice.finish_reason) sink.finishTools();
  return true;
}

/** Assembles OpenAI chat tool-call fragments (interleaved by index) into whole calls. */
function toolAssembler(callbacks) {
  const calls = new Map();
  return {
    fragment(piece) {
      let call = calls.get(piece.index);
      if (!call) {
        call = { id: piece.id || `call-${piece.index}`, name: "", args: "", started: false };
        calls.set(piece.index, call);
      }
      const fn = piece.function || {};
      if (fn.name && !call.name) call.name = fn.name;
      if (fn.arguments) call.args += fn.arguments;
      if (!call.started && call.name) {
        call.started = true;
        callbacks.onToolStart({ id: call.id, name: call.name });
        if (call.args) callbacks.onToolDelta({ id: call.id, delta: call.args });
      } else if (call.started && fn.arguments) {
        callbacks.onToolDelta({ id: call.id, delta: fn.arguments });
      }
    },
    finish() {
      for (const call of calls.values()) {
        let input;
        try {
          input = call.args.trim() ? JSON.parse(call.args) : {};
        } catch {
          throw new StreamError(`The model called ${call.name} with input that is not JSON.`);
        }
        callbacks.onToolCall({ id: call.id, name: call.name, input, arguments: call.args });
      }
      calls.clear();
    },
  };
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
 * Resolves with the whole text once the stream ended cleanly. Optional: `onReasoning(delta)`
 * for a thinking model's reasoning, and `onToolStart`, `onToolDelta`, `onToolCall` for tool
 * calls (openai chat chunks and the ui format carry both; text and completion chunks do not).
 */
export async function streamText(url, body, options = {}) {
  const { onText = () => {}, signal, headers = {} } = options;
  const noop = () => {};
  const callbacks = {
    onReasoning: options.onReasoning || noop,
    onToolStart: options.onToolStart || noop,
    onToolDelta: options.onToolDelta || noop,
    onToolCall: options.onToolCall || noop,
  };
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
  const tools = toolAssembler(callbacks);
  const sink = {
    ...callbacks,
    text: emit,
    toolFragment: tools.fragment,
    finishTools: tools.finish,
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
        if (!handleEvent(data, sink)) return text;
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
