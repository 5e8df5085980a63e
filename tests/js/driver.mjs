// The real JavaScript clients, driven from pytest (tests/jsdriver.py) over stdin/stdout.
//
// One process per test module: each input line is {"id", "op", "args"}, each output line
// {"id", "ok", "result"} or {"id", "ok": false, "error"}. Calls may overlap (a browser waits for
// text while pytest releases the upstream's gate). Every client that does HTTP is handed a
// recording fetch, so a test can also check the raw bytes the client was given (keep-alives).

import { createInterface } from "node:readline";
import {
  AbstractChat,
  DefaultChatTransport,
  TextStreamChatTransport,
  callCompletionApi,
  generateObject,
  generateText,
  isStepCount,
  lastAssistantMessageIsCompleteWithToolCalls,
  streamText,
  tool,
} from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";
import { EventSourceParserStream } from "eventsource-parser/stream";
import { SignJWT, importJWK } from "jose";
import { chromium } from "playwright-core";

const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** fetch that also keeps a copy of every response body, as the bytes arrived. */
function recordingFetch() {
  const raw = [];
  const statuses = [];
  const pending = [];
  const fetcher = async (input, init) => {
    const response = await fetch(input, init);
    statuses.push(response.status);
    if (!response.body) return response;
    const [mine, theirs] = response.body.tee();
    const decoder = new TextDecoder();
    const index = raw.push("") - 1;
    pending.push((async () => {
      const reader = mine.getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          raw[index] += decoder.decode(value, { stream: true });
        }
      } catch {
        raw[index] += "\u0000BROKEN";
      }
    })());
    return new Response(theirs, { status: response.status, headers: response.headers });
  };
  const settled = () => Promise.all(pending);
  return { fetcher, raw, statuses, settled };
}

class PlainState {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) {
    this.messages = [...this.messages, message];
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

/** useChat without React: the SDK's own AbstractChat over a plain state object. */
class NodeChat extends AbstractChat {
  constructor(options) {
    super({ ...options, state: new PlainState() });
  }
}

let browser = null;
let page = null;

const ops = {
  /**
   * Mint a JWT with jose, as a site's Next.js route does (HS256 with the shared `secret`) or as
   * an auth provider does (a private `jwk`). Claims and header fields pass through as given.
   */
  async mint({ alg, secret, jwk, kid, subject, expiresIn = "10m", claims = {}, header = {} }) {
    const key = secret !== undefined ? new TextEncoder().encode(secret) : await importJWK(jwk, alg);
    let builder = new SignJWT(claims)
      .setProtectedHeader({ alg, ...(kid ? { kid } : {}), ...header })
      .setIssuedAt()
      .setExpirationTime(expiresIn);
    if (subject) builder = builder.setSubject(subject);
    return { token: await builder.sign(key) };
  },

  async completion({ api, prompt, streamProtocol, headers }) {
    const rec = recordingFetch();
    let error = null;
    let completion = "";
    const result = await callCompletionApi({
      api,
      prompt,
      streamProtocol,
      headers,
      setCompletion: (text) => {
        completion = text;
      },
      setLoading: () => {},
      setError: (e) => {
        if (e) error = e.message;
      },
      setAbortController: () => {},
      onError: (e) => {
        error = e.message;
      },
      fetch: rec.fetcher,
    });
    await rec.settled();
    const raw = rec.raw[0] ?? "";
    return { result: result ?? null, completion, error, raw, status: rec.statuses[0] ?? null };
  },

  async chat({ api, text, transport, body, files }) {
    const rec = recordingFetch();
    const Transport = transport === "text" ? TextStreamChatTransport : DefaultChatTransport;
    let finish = null;
    const chat = new NodeChat({
      id: "c1",
      transport: new Transport({ api, fetch: rec.fetcher, body }),
      onFinish: ({ finishReason, isError }) => {
        finish = { finishReason: finishReason ?? null, isError };
      },
    });
    await chat.sendMessage(files ? { text, files } : { text });
    const reply = chat.messages.at(-1);
    const replyText = reply.role === "assistant"
      ? reply.parts.filter((p) => p.type === "text").map((p) => p.text).join("")
      : "";
    await rec.settled();
    return {
      status: chat.status,
      error: chat.error ? chat.error.message : null,
      text: replyText,
      parts: reply.parts,
      finish,
      raw: rec.raw[0] ?? "",
    };
  },

  /** useChat with a client-side tool: the call arrives (onToolCall), the app adds its output,
   * and the SDK sends the follow-up by itself (lastAssistantMessageIsCompleteWithToolCalls). */
  async chat_tool({ api, text, tools, output }) {
    const rec = recordingFetch();
    const requests = [];
    const fetcher = (input, init) => {
      requests.push(JSON.parse(init.body));
      return rec.fetcher(input, init);
    };
    const calls = [];
    let finished = 0;
    let second;
    const secondDone = new Promise((resolve) => {
      second = resolve;
    });
    const chat = new NodeChat({
      id: "c2",
      transport: new DefaultChatTransport({ api, fetch: fetcher, body: { tools } }),
      onToolCall: ({ toolCall }) => {
        calls.push(toolCall);
      },
      sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
      onFinish: () => {
        finished += 1;
        if (finished === 2) second();
      },
    });
    await chat.sendMessage({ text });
    const afterFirst = structuredClone(chat.messages.at(-1));
    const call = calls[0];
    await chat.addToolOutput({ tool: call.toolName, toolCallId: call.toolCallId, output });
    await secondDone;
    await rec.settled();
    return {
      calls,
      afterFirst,
      final: structuredClone(chat.messages.at(-1)),
      requests,
      status: chat.status,
      error: chat.error ? chat.error.message : null,
    };
  },

  /** @ai-sdk/openai-compatible pointed at the function's /api/v1: streamText running a
   * multi-step tool loop (the SDK executes the tool and calls again), generateText and
   * generateObject (non-streaming calls). */
  async compatible({ baseURL, model, prompt, mode }) {
    const provider = createOpenAICompatible({
      name: "fn",
      baseURL,
      apiKey: "caller-own-key",
      includeUsage: true,
      supportsStructuredOutputs: true,
    });
    if (mode === "generateText") {
      const result = await generateText({ model: provider(model), prompt });
      return { text: result.text, finishReason: result.finishReason, usage: result.usage };
    }
    if (mode === "generateObject") {
      const result = await generateObject({
        model: provider(model),
        prompt,
        schema: z.object({ city: z.string(), temp_c: z.number() }),
      });
      return { object: result.object };
    }
    const executed = [];
    const result = streamText({
      model: provider(model),
      prompt,
      providerOptions: { fn: { reasoningEffort: "low" } },
      tools: {
        get_weather: tool({
          description: "The weather in a city.",
          inputSchema: z.object({ city: z.string() }),
          execute: async ({ city }) => {
            executed.push(city);
            return { city, temp_c: 21 };
          },
        }),
      },
      stopWhen: isStepCount(3),
    });
    let text = "";
    let reasoning = "";
    for await (const part of result.fullStream) {
      if (part.type === "text-delta") text += part.text;
      if (part.type === "reasoning-delta") reasoning += part.text;
      if (part.type === "error") throw part.error;
    }
    const steps = await result.steps;
    return {
      text,
      reasoning,
      executed,
      finishReasons: steps.map((step) => step.finishReason),
    };
  },

  /** @ai-sdk/openai (its default model call is the Responses API) pointed at the function's
   * /api/v1: streamText with a tool the SDK executes, then a second step with its result
   * (store: false, as a stateless server needs), or generateText (one Response object). */
  async responses({ baseURL, model, prompt, mode, reasoning }) {
    const provider = createOpenAI({ baseURL, apiKey: "caller-own-key" });
    const providerOptions = {
      openai: { store: false, ...(reasoning ? { reasoningEffort: "low", reasoningSummary: "auto" } : {}) },
    };
    if (mode === "generateText") {
      const result = await generateText({ model: provider(model), prompt, providerOptions });
      return { text: result.text, finishReason: result.finishReason, usage: result.usage };
    }
    const executed = [];
    const result = streamText({
      model: provider(model),
      prompt,
      providerOptions,
      tools: {
        get_weather: tool({
          description: "The weather in a city.",
          inputSchema: z.object({ city: z.string() }),
          execute: async ({ city }) => {
            executed.push(city);
            return { city, temp_c: 21 };
          },
        }),
      },
      stopWhen: isStepCount(3),
    });
    let text = "";
    let reasoning_text = "";
    const errors = [];
    const tools = [];
    for await (const part of result.fullStream) {
      if (part.type === "text-delta") text += part.text;
      if (part.type === "reasoning-delta") reasoning_text += part.text;
      if (part.type === "tool-call") tools.push({ name: part.toolName, input: part.input });
      if (part.type === "error") errors.push(String(part.error?.message ?? part.error));
    }
    const steps = await result.steps;
    return {
      text,
      reasoning: reasoning_text,
      executed,
      tools,
      errors,
      finishReasons: steps.map((step) => step.finishReason),
    };
  },

  async eventsource({ url, body }) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const events = [];
    const stream = response.body
      .pipeThrough(new TextDecoderStream())
      .pipeThrough(new EventSourceParserStream());
    for await (const event of stream) events.push(event.data);
    return { status: response.status, events };
  },

  async streamjs({ url, body, feeds }) {
    const module = await import(new URL("../../public/stream.js", import.meta.url));
    if (feeds) {
      // Each feed is one stream cut into pieces: the events every way of cutting it gives.
      return feeds.map((feed) => {
        const parser = new module.SSEParser();
        return feed.flatMap((piece) => parser.push(piece));
      });
    }
    const deltas = [];
    try {
      const text = await module.streamText(url, body, { onText: (d) => deltas.push(d) });
      return { text, deltas, error: null };
    } catch (e) {
      return { text: null, deltas, error: e.message, name: e.name, status: e.status ?? null };
    }
  },

  async goto({ url }) {
    if (!browser) {
      browser = await chromium.launch({
        executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
        headless: false, // the flags below say --headless, exactly as known to work here
        args: CHROMIUM_FLAGS, // launch() itself gives Chromium a fresh temporary profile
      });
    }
    if (page) await page.close();
    page = await browser.newPage();
    page.consoleErrors = [];
    page.on("console", (m) => m.type() === "error" && page.consoleErrors.push(m.text()));
    await page.goto(url);
    return {};
  },

  async click({ selector }) {
    await page.click(selector);
    return {};
  },

  async select({ selector, value }) {
    await page.selectOption(selector, value);
    return {};
  },

  async fill({ selector, value }) {
    await page.fill(selector, value);
    return {};
  },

  /** Wait until the element's text starts with `prefix` and is at least `length` long. */
  async wait_text({ selector, prefix = "", length = 1, timeout = 10000 }) {
    await page.waitForFunction(
      ([sel, pre, len]) => {
        const t = document.querySelector(sel).textContent;
        return t.startsWith(pre) && t.length >= len;
      },
      [selector, prefix, length],
      { timeout },
    );
    return { text: await page.textContent(selector) };
  },

  async upload({ selector, name, mimeType, base64 }) {
    await page.setInputFiles(selector, { name, mimeType, buffer: Buffer.from(base64, "base64") });
    return {};
  },

  async attribute({ selector, name }) {
    return { value: await page.getAttribute(selector, name) };
  },

  async count({ selector }) {
    return { count: await page.locator(selector).count() };
  },

  async text({ selector }) {
    return { text: await page.textContent(selector), consoleErrors: page.consoleErrors };
  },
};

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const { id, op, args } = JSON.parse(line);
  let reply;
  try {
    reply = { id, ok: true, result: await ops[op](args ?? {}) };
  } catch (e) {
    reply = { id, ok: false, error: `${e.name}: ${e.message}` };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
lines.on("close", async () => {
  if (browser) await browser.close();
  process.exit(0);
});
process.stdout.write(JSON.stringify({ id: 0, ok: true, result: "ready" }) + "\n");
