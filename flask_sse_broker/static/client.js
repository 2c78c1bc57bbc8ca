/**
 * flask-sse-broker browser client: an ES module, no build step.
 *
 *     import { connectSSE } from "/_sse/client.js";
 *     const sse = connectSSE("main", { topics: ["orders"] });
 *     sse.on("order", (msg) => console.log(msg.data));
 *
 * The client owns reconnection. It keeps one native EventSource at a time and
 * closes it on any error, so the browser's own retry never races ours; it
 * reconnects with a jittered exponential backoff, resuming from its cursor
 * (`lastEventId=`) with its token (`token=`) and topics (`topics=`), so the
 * server replays whatever was published while it was away.
 *
 * States (onStateChange):
 * - `connecting`: an attempt is open or a reconnect is scheduled (retries stay
 *   in this state; a lost stream goes connected -> connecting -> connected);
 * - `connected`: the server's `connected` event arrived;
 * - `disconnected`: not trying (before connect(), after disconnect(), or a
 *   lost stream with autoReconnect off);
 * - `error`: stopped, the reason given to onError handlers (`fatal: true`):
 *   the server answered 204, 400, 401, 403 or 404 (retrying the same request
 *   cannot help; EventSource hides the status, so one fetch() asks for it when
 *   a stream fails before opening), or `maxRetries` attempts in a row failed.
 *   connect() starts again from any of these.
 *
 * The watchdog: no event at all (heartbeats included) for two heartbeat
 * periods plus a second means the stream is dead though its socket is open;
 * the client closes it and reconnects. The period is the server's (from
 * `connected`), `config.heartbeatInterval` until the server has said it.
 * The `retry:` hint of the stream is invisible to scripts, so the backoff
 * settings alone decide when to reconnect.
 *
 * Event names the client handles itself:
 * - `heartbeat`: swallowed; it only feeds the watchdog.
 * - `connected`: read for the client id, token, topics and heartbeat period,
 *   then given to `on("connected")` handlers only (not to "*").
 * - `reset`: the server could not replay everything since the cursor (history
 *   too short, or the server restarted): the page should reload its state.
 *   Given to `on("reset")` handlers only (not to "*").
 *
 * A native EventSource only dispatches a named event to listeners of that
 * name, so the "*" wildcard sees unnamed events, the SSEHelper's names
 * (notification, update, alert, progress), every name passed to on(), and
 * the names listed in `config.events`.
 */

/** @type {Readonly<Required<import("./client").SSEConfig>>} */
export const DEFAULT_CONFIG = Object.freeze({
  url: "/_sse/connect",
  topics: [],
  autoReconnect: true,
  maxRetries: 5,
  reconnectDelay: 1000,
  maxReconnectDelay: 30000,
  heartbeatInterval: 30000,
  withCredentials: false,
  lastEventId: null,
  debug: false,
  events: [],
});

/** Names the wildcard listens for besides those passed to on(). */
const WILDCARD_EVENTS = ["message", "notification", "update", "alert", "progress"];
/** Answers to GET /connect that retrying cannot fix: the client stops. */
const FATAL_STATUS = new Set([204, 400, 401, 403, 404]);
/** The watchdog allows two heartbeat periods plus this much for slow networks. */
const WATCHDOG_GRACE = 1000;
/** How long a status probe may take before it counts as a network error. */
const PROBE_TIMEOUT = 5000;

function baseURL() {
  return globalThis.document?.baseURI ?? globalThis.location?.href ?? undefined;
}

function parseData(raw) {
  try {
    return JSON.parse(raw);
  } catch {
    return raw; // a raw payload (SSEEvent(..., raw=True)) stays a string
  }
}

function cleanTopics(topics) {
  return topics.flat().map(String).filter((topic) => topic.length > 0);
}

/** An error answered by the server to subscribe() or unsubscribe(). */
export class SSERequestError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "SSERequestError";
    this.status = status;
  }
}

export class SSEClient {
  /** @param {import("./client").SSEConfig} [config] */
  constructor(config = {}) {
    this.config = { ...DEFAULT_CONFIG, ...config };
    this._state = "disconnected";
    this._source = null;
    this._opened = false;
    this._handlers = new Map(); // event name -> Set of handlers
    this._stateHandlers = new Set();
    this._errorHandlers = new Set();
    this._clientId = null;
    this._token = null;
    this._lastEventId = this.config.lastEventId || null;
    this._topics = new Set(cleanTopics(this.config.topics || []));
    // Topic changes made while not connected, applied once the server says hello.
    this._pendingSubscribe = new Set();
    this._pendingUnsubscribe = new Set();
    this._attempt = 0;
    this._retryTimer = null;
    this._watchdogTimer = null;
    this._lastSeen = 0;
    this._heartbeat = 0; // the server's period, learnt from `connected`
    this._probe = null;
    // Bumped by connect() and disconnect(): late callbacks of an older run see
    // a different number and do nothing.
    this._generation = 0;
    this._dispatch = (event) => this._onEvent(event);
  }

  /** "connecting" | "connected" | "disconnected" | "error" */
  get state() {
    return this._state;
  }

  /** The id the server gave this client (null until connected). */
  get clientId() {
    return this._clientId;
  }

  /** The id of the last event received: where a reconnect resumes. */
  get lastEventId() {
    return this._lastEventId;
  }

  /** The topics this client is subscribed to, as far as it knows. */
  get topics() {
    return [...this._topics].sort();
  }

  // -- handlers --------------------------------------------------------------

  /**
   * Call `handler` for every event named `type` ("*" for all application
   * events, "message" for unnamed ones). Returns a function that removes it.
   */
  on(type, handler) {
    let handlers = this._handlers.get(type);
    if (!handlers) {
      handlers = new Set();
      this._handlers.set(type, handlers);
      if (this._source) {
        for (const name of this._namesFor(type)) this._listen(this._source, name);
      }
    }
    handlers.add(handler);
    return () => {
      handlers.delete(handler);
    };
  }

  /** Handle unnamed events (`event:` absent), as EventSource.onmessage does. */
  onMessage(handler) {
    return this.on("message", handler);
  }

  /** Handle connection errors: `{message, status, fatal, attempt, retryIn}`. */
  onError(handler) {
    this._errorHandlers.add(handler);
    return () => this._errorHandlers.delete(handler);
  }

  /** Handle state changes: `handler(state, previous)`. */
  onStateChange(handler) {
    this._stateHandlers.add(handler);
    return () => this._stateHandlers.delete(handler);
  }

  // -- connection ------------------------------------------------------------

  /** Open the stream (again after disconnect() or an error). */
  connect() {
    if (this._source || this._retryTimer !== null || this._probe) return this;
    this._generation += 1;
    this._attempt = 0;
    this._open();
    return this;
  }

  /** Close the stream and stop reconnecting. */
  disconnect() {
    this._generation += 1;
    this._halt();
    this._setState("disconnected");
    return this;
  }

  _open() {
    this._retryTimer = null;
    this._setState("connecting");
    const url = this._connectURL();
    this._log("connecting to", url);
    const source = new EventSource(url, { withCredentials: !!this.config.withCredentials });
    this._source = source;
    this._opened = false;
    for (const type of this._handlers.keys()) {
      for (const name of this._namesFor(type)) this._listen(source, name);
    }
    for (const name of ["connected", "heartbeat", "reset", "message"]) this._listen(source, name);
    // A server may send `event: open` or `event: error`: those arrive through
    // these two handlers as MessageEvents and are passed on as events.
    source.onopen = (event) => {
      if (event instanceof MessageEvent) return this._onEvent(event);
      this._opened = true;
    };
    source.onerror = (event) => {
      if (event instanceof MessageEvent) return this._onEvent(event);
      this._onSourceError(source);
    };
    this._touch();
  }

  _listen(source, name) {
    // onopen/onerror carry these two; adding the same listener twice is a no-op.
    if (name !== "open" && name !== "error") source.addEventListener(name, this._dispatch);
  }

  _namesFor(type) {
    if (type !== "*") return [type];
    return [...WILDCARD_EVENTS, ...cleanTopics(this.config.events || [])];
  }

  _connectURL() {
    const url = new URL(this.config.url, baseURL());
    const params = url.searchParams;
    if (this._topics.size) params.set("topics", [...this._topics].join(","));
    if (this._lastEventId) params.set("lastEventId", this._lastEventId);
    if (this._token) params.set("token", this._token);
    return url.toString();
  }

  _endpoint(action) {
    const url = new URL(this.config.url, baseURL());
    url.search = "";
    url.hash = "";
    url.pathname = url.pathname.replace(/\/[^/]*\/?$/, "/" + action);
    return url.toString();
  }

  /** Close the native EventSource and every timer; no state change. */
  _halt() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (this._probe) {
      this._probe.abort();
      this._probe = null;
    }
    this._closeSource();
  }

  _closeSource() {
    clearTimeout(this._watchdogTimer);
    this._watchdogTimer = null;
    const source = this._source;
    if (!source) return;
    this._source = null;
    source.onopen = null;
    source.onerror = null;
    source.close(); // before the browser retries on its own
  }

  _onSourceError(source) {
    if (source !== this._source) return;
    const opened = this._opened;
    this._closeSource();
    if (opened) {
      this._retry("the connection was lost", null);
      return;
    }
    // The stream never opened. EventSource does not expose the HTTP status,
    // so ask for it once: a 403 must stop the client, a 503 must not.
    const generation = this._generation;
    this._probeStatus(this._connectURL()).then((answer) => {
      if (generation !== this._generation) return;
      const { status, message, eventStream } = answer;
      if (FATAL_STATUS.has(status)) {
        this._fail(`the server answered ${status}: ${message}`, status);
      } else if (status === 200 && !eventStream) {
        this._fail(`${this.config.url} is not an event stream`, status);
      } else {
        this._retry(status ? `the server answered ${status}: ${message}` : message, status || null);
      }
    });
  }

  async _probeStatus(url) {
    const controller = new AbortController();
    this._probe = controller;
    const timeout = setTimeout(() => controller.abort(), PROBE_TIMEOUT);
    try {
      const response = await fetch(url, {
        headers: { Accept: "text/event-stream" },
        credentials: this.config.withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      const type = response.headers.get("Content-Type") || "";
      const eventStream = type.startsWith("text/event-stream");
      let message = response.statusText || "no reason given";
      if (eventStream) {
        controller.abort(); // never hold a second stream open
      } else {
        try {
          const body = await response.json();
          if (body && body.error) message = body.error;
        } catch {
          // not JSON: keep the status text
        }
      }
      return { status: response.status, message, eventStream };
    } catch {
      return { status: 0, message: "the server cannot be reached", eventStream: false };
    } finally {
      clearTimeout(timeout);
      if (this._probe === controller) this._probe = null;
    }
  }

  /** Schedule the next attempt, or give up when the retries are spent. */
  _retry(message, status) {
    if (!this.config.autoReconnect) {
      this._emitError({ message, status, fatal: false, attempt: this._attempt, retryIn: null });
      this._setState("disconnected");
      return;
    }
    this._attempt += 1;
    const max = this.config.maxRetries;
    if (max > 0 && this._attempt > max) {
      this._fail(`gave up after ${max} retries: ${message}`, status);
      return;
    }
    const delay = this._backoff(this._attempt);
    this._log(`${message}; retry ${this._attempt} in ${delay} ms`);
    this._emitError({ message, status, fatal: false, attempt: this._attempt, retryIn: delay });
    this._setState("connecting");
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  /**
   * "Equal jitter": a random delay in [d/2, d] where d doubles each attempt up
   * to maxReconnectDelay. Spreads a crowd reconnecting to a restarted server,
   * and no attempt waits less than the previous one did at most.
   */
  _backoff(attempt) {
    const { reconnectDelay, maxReconnectDelay } = this.config;
    const ceiling = Math.min(maxReconnectDelay, reconnectDelay * 2 ** (attempt - 1));
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  _fail(message, status) {
    this._halt();
    this._log("stopped:", message);
    this._emitError({ message, status, fatal: true, attempt: this._attempt, retryIn: null });
    this._setState("error");
  }

  // -- watchdog --------------------------------------------------------------

  /** Something arrived (or an attempt began): the stream is alive. */
  _touch() {
    this._lastSeen = Date.now();
    if (this._watchdogTimer === null) this._armWatchdog(this._watchdogLimit());
  }

  _watchdogLimit() {
    // Before `connected` (a server frozen mid-accept) the configured period
    // applies; afterwards the server's. A server without heartbeats (0) cannot
    // be watched once connected.
    const period = this._state === "connected" ? this._heartbeat : this._heartbeat || this.config.heartbeatInterval;
    return period > 0 ? 2 * period + WATCHDOG_GRACE : 0;
  }

  _armWatchdog(delay) {
    if (delay > 0) this._watchdogTimer = setTimeout(() => this._checkWatchdog(), delay);
  }

  _checkWatchdog() {
    // Checked against the clock, not re-armed per event: cheap at high event
    // rates, and right when a background tab's timers fire late.
    this._watchdogTimer = null;
    const limit = this._watchdogLimit();
    if (!this._source || !limit) return;
    const idle = Date.now() - this._lastSeen;
    if (idle < limit) {
      this._armWatchdog(limit - idle);
      return;
    }
    this._closeSource();
    this._retry(`no event from the server for ${idle} ms`, null);
  }

  // -- events ----------------------------------------------------------------

  _onEvent(event) {
    if (event.target !== this._source) return;
    this._touch();
    if (event.lastEventId) this._lastEventId = event.lastEventId;
    const type = event.type;
    if (type === "heartbeat") return;
    const message = { type, data: parseData(event.data), id: event.lastEventId, raw: event.data };
    if (type === "connected") {
      this._onConnected(message.data);
      this._deliver(type, message);
      return;
    }
    this._deliver(type, message);
    if (type !== "reset") this._deliver("*", message);
  }

  _onConnected(hello) {
    this._clientId = hello.clientId ?? null;
    this._token = hello.token ?? this._token;
    this._heartbeat = Number(hello.heartbeat) || 0;
    this._topics = new Set(hello.topics || []);
    this._attempt = 0;
    this._setState("connected");
    clearTimeout(this._watchdogTimer);
    this._watchdogTimer = null;
    this._armWatchdog(this._watchdogLimit());
    this._applyPendingTopics();
  }

  _applyPendingTopics() {
    const add = [...this._pendingSubscribe].filter((topic) => !this._topics.has(topic));
    const remove = [...this._pendingUnsubscribe].filter((topic) => this._topics.has(topic));
    this._pendingSubscribe.clear();
    this._pendingUnsubscribe.clear();
    const report = (error) => this._log("could not apply a topic change:", error);
    if (add.length) this.subscribe(...add).catch(report);
    if (remove.length) this.unsubscribe(...remove).catch(report);
  }

  _deliver(type, message) {
    const handlers = this._handlers.get(type);
    if (!handlers) return;
    for (const handler of [...handlers]) {
      try {
        handler(message);
      } catch (error) {
        console.error(`[sse] a handler for "${type}" failed`, error);
      }
    }
  }

  _emitError(info) {
    for (const handler of [...this._errorHandlers]) {
      try {
        handler(info);
      } catch (error) {
        console.error("[sse] an onError handler failed", error);
      }
    }
  }

  _setState(state) {
    const previous = this._state;
    if (state === previous) return;
    this._state = state;
    this._log("state", previous, "->", state);
    for (const handler of [...this._stateHandlers]) {
      try {
        handler(state, previous);
      } catch (error) {
        console.error("[sse] an onStateChange handler failed", error);
      }
    }
  }

  _log(...args) {
    if (this.config.debug) console.debug("[sse]", ...args);
  }

  // -- topics ----------------------------------------------------------------

  /** Add topics; resolves to the client's topics now. */
  subscribe(...topics) {
    return this._changeTopics("subscribe", cleanTopics(topics));
  }

  /** Remove topics; resolves to the client's topics now. */
  unsubscribe(...topics) {
    return this._changeTopics("unsubscribe", cleanTopics(topics));
  }

  async _changeTopics(action, topics) {
    if (!topics.length) return this.topics;
    if (this._state !== "connected" || !this._token) {
      // Not connected: the next connect asks for these topics, and the rest is
      // sent once the server says hello.
      const [apply, undo] =
        action === "subscribe"
          ? [this._pendingSubscribe, this._pendingUnsubscribe]
          : [this._pendingUnsubscribe, this._pendingSubscribe];
      for (const topic of topics) {
        apply.add(topic);
        undo.delete(topic);
        if (action === "subscribe") this._topics.add(topic);
        else this._topics.delete(topic);
      }
      return this.topics;
    }
    const response = await fetch(this._endpoint(action), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: this.config.withCredentials ? "include" : "same-origin",
      body: JSON.stringify({ token: this._token, topics }),
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      // reported below
    }
    if (!response.ok || !body || !Array.isArray(body.topics)) {
      const reason = (body && body.error) || response.statusText || "unexpected answer";
      throw new SSERequestError(`${action} failed (${response.status}): ${reason}`, response.status);
    }
    this._topics = new Set(body.topics);
    return this.topics;
  }
}

export class SSEManager {
  constructor() {
    this._clients = new Map();
    this._defaults = {};
  }

  /** Config every client made from now on starts from. */
  setDefaultConfig(config) {
    Object.assign(this._defaults, config);
    return this;
  }

  /** The client named `name`, made (not connected) on first use. */
  client(name, config) {
    let client = this._clients.get(name);
    if (!client) {
      client = new SSEClient({ ...this._defaults, ...config });
      this._clients.set(name, client);
    }
    return client;
  }

  /** Connect the client named `name`, making it first if needed. */
  connect(name, config) {
    return this.client(name, config).connect();
  }

  disconnect(name) {
    this._clients.get(name)?.disconnect();
  }

  disconnectAll() {
    for (const client of this._clients.values()) client.disconnect();
  }

  /** Disconnect and forget the client named `name`; whether there was one. */
  remove(name) {
    const client = this._clients.get(name);
    if (!client) return false;
    client.disconnect();
    return this._clients.delete(name);
  }

  has(name) {
    return this._clients.has(name);
  }

  getClientNames() {
    return [...this._clients.keys()];
  }
}

let manager = null;

/** The page's one SSEManager. */
export function getSSEManager() {
  if (manager === null) manager = new SSEManager();
  return manager;
}

/** The managed client named `name`, connected. */
export function connectSSE(name, config) {
  return getSSEManager().connect(name, config);
}

/** A client outside the manager, not yet connected. */
export function createSSEClient(config) {
  return new SSEClient(config);
}
