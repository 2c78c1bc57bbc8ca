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
 *   too short, the server restarted, or it no longer accepted the client's
 *   token and made it a new client): the page should reload its state.
 *   Given to `on("reset")` handlers only (not to "*").
 * - `revoked`: the server took topics away (`{topics: [...]}`); they leave
 *   `client.topics`, so no reconnect asks for them again. Given to
 *   `on("revoked")` handlers only (not to "*"): like `connected` and `reset`
 *   it is about the subscription, not an application event.
 *
 * Every `connected` event hands the client its id and token; a server that
 * no longer accepts the old token (its SECRET_KEY changed) makes it a new
 * client, and the client carries on with the new ones.
 *
 * Topic changes while the stream is down: a subscribe joins the reconnect's
 * `topics=`; an unsubscribe is POSTed (with the token) before the stream
 * reopens and leaves `topics=`, so the replay of what happened while away
 * cannot bring back a topic the page has dropped.
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
  shared: false,
});

/** Names the wildcard listens for besides those passed to on(). */
const WILDCARD_EVENTS = ["message", "notification", "update", "alert", "progress"];
/** Events the client handles itself; always listened for. */
const CONTROL_EVENTS = ["connected", "heartbeat", "reset", "revoked"];
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

/**
 * On a shared stream (`shared=1`, read by the SharedWorker) every published
 * event's data starts with a line holding its topic as JSON (`null` for
 * broadcasts and direct sends). Control events are sent as they are: their
 * data is one line of JSON. Returns `[topic, data]`; `topic` is undefined
 * when the data carries none.
 */
function splitShared(type, data) {
  const newline = data.indexOf("\n");
  if (newline < 0 || CONTROL_EVENTS.includes(type) && data.startsWith("{")) return [undefined, data];
  try {
    return [JSON.parse(data.slice(0, newline)), data.slice(newline + 1)];
  } catch {
    return [undefined, data];
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

  /** Whether events come through the tabs' shared stream (see `shared`). */
  get shared() {
    return false;
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
    if (this._pendingUnsubscribe.size && this._token) {
      this._sendPendingUnsubscribes();
      return;
    }
    const url = this._connectURL();
    this._log("connecting to", url);
    const source = new EventSource(url, { withCredentials: !!this.config.withCredentials });
    this._source = source;
    this._opened = false;
    for (const type of this._handlers.keys()) {
      for (const name of this._namesFor(type)) this._listen(source, name);
    }
    for (const name of [...CONTROL_EVENTS, "message"]) this._listen(source, name);
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

  /**
   * Topics dropped while the stream was down: tell the server before the
   * stream reopens, since it remembers the client's topics for a while and
   * would otherwise replay (and keep sending) them. A server that does not
   * know the client (404) or no longer accepts its token (403) needs
   * nothing: the reconnect without these topics is right. A server that
   * cannot be reached or fails counts as a failed attempt.
   */
  async _sendPendingUnsubscribes() {
    const generation = this._generation;
    const topics = [...this._pendingUnsubscribe];
    const controller = new AbortController();
    this._probe = controller; // connect() waits for it; _halt() aborts it
    let status = 0;
    let message = "the server cannot be reached";
    try {
      const { response, body } = await this._post("unsubscribe", topics, this._token, controller.signal);
      status = response.status;
      message = (body && body.error) || response.statusText;
    } catch {
      // status 0: a network error
    } finally {
      if (this._probe === controller) this._probe = null;
    }
    if (generation !== this._generation) return;
    if (status === 0 || status >= 500) {
      this._retry(status ? `unsubscribe answered ${status}: ${message}` : message, status || null);
      return;
    }
    for (const topic of topics) this._pendingUnsubscribe.delete(topic);
    this._open();
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
    if (this._sharedStream) params.set("shared", "1");
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
    let raw = event.data;
    let topic;
    if (this._sharedStream) [topic, raw] = splitShared(type, raw);
    const message = { type, data: parseData(raw), id: event.lastEventId, raw };
    if (topic !== undefined) message.topic = topic;
    if (type === "connected") this._onConnected(message.data);
    else if (type === "revoked") this._onRevoked(message.data);
    this._deliver(type, message);
    if (!CONTROL_EVENTS.includes(type)) this._deliver("*", message);
  }

  _onRevoked(data) {
    const topics = Array.isArray(data && data.topics) ? data.topics : [];
    for (const topic of topics) {
      this._topics.delete(topic);
      this._pendingSubscribe.delete(topic);
    }
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
      if (action === "unsubscribe" && this._source && this._token) {
        // An attempt is on its way asking for the old topics, and its replay
        // would bring the dropped ones: start it again, unsubscribing first.
        this._closeSource();
        this._open();
      }
      return this.topics;
    }
    const token = this._token;
    let { response, body } = await this._post(action, topics, token);
    if (response.status === 403 && this._token !== token) {
      // The server stopped accepting the old token and the stream has
      // reconnected as a new client meanwhile: the request is the new one's.
      ({ response, body } = await this._post(action, topics, this._token));
    }
    if (response.status === 403 && body && body.error === "invalid token" && this._state !== "connected") {
      // Refused for the token while the stream is down: the reconnect makes
      // a new client, and the change is applied once it says hello.
      return this._changeTopics(action, topics);
    }
    if (!response.ok || !body || !Array.isArray(body.topics)) {
      const reason = (body && body.error) || response.statusText || "unexpected answer";
      throw new SSERequestError(`${action} failed (${response.status}): ${reason}`, response.status);
    }
    this._topics = new Set(body.topics);
    return this.topics;
  }

  async _post(action, topics, token, signal) {
    const response = await fetch(this._endpoint(action), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: this.config.withCredentials ? "include" : "same-origin",
      body: JSON.stringify({ token, topics }),
      signal,
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      // the caller reports a body that is not JSON
    }
    return { response, body };
  }
}

// -- one stream for all tabs -----------------------------------------------------

/** How often a tab without the Web Locks API tells the worker it is alive. */
const PING_INTERVAL = 20000;

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

/**
 * Hold a Web Lock named `name` until the returned function is called, or
 * until this page goes away (closed, crashed, navigated): the browser frees
 * a dead page's locks, which is how the worker learns that a tab is gone.
 * `null` where the Web Locks API is missing.
 */
function holdLock(name) {
  const locks = globalThis.navigator?.locks;
  if (!locks) return Promise.resolve(null);
  let release;
  const held = new Promise((resolve) => {
    release = resolve;
  });
  return new Promise((granted) => {
    locks.request(name, () => {
      granted(release);
      return held;
    });
  });
}

/**
 * An SSEClient whose stream lives in a SharedWorker (`/_sse/shared-worker.js`)
 * that every tab of the origin with the same `url` shares. The tab keeps the
 * whole client API; the worker holds one EventSource (itself an SSEClient, so
 * reconnection, backoff, the watchdog, stop-on-4xx and Last-Event-ID resume
 * are the same code) subscribed to the union of the tabs' topics, and hands
 * each tab the events of its own topics, broadcasts and direct sends.
 *
 * Where SharedWorker is missing (or the worker cannot run), the client falls
 * back to a stream of its own: the base class, unchanged.
 */
class SharedSSEClient extends SSEClient {
  constructor(config) {
    super(config);
    this._local = typeof SharedWorker !== "function";
    this._port = null;
    this._member = null;
    this._releaseLock = null;
    this._pinger = null;
    this._welcomed = false;
    this._replies = new Map(); // request id -> {resolve, reject}
    this._requests = 0;
  }

  /** Whether this client shares the worker's stream (false: its own stream). */
  get shared() {
    return !this._local;
  }

  on(type, handler) {
    const fresh = !this._handlers.has(type);
    const off = super.on(type, handler);
    if (fresh && this._port) this._send({ op: "names", names: this._namesFor(type) });
    return off;
  }

  connect() {
    if (this._local) return super.connect();
    if (this._port) {
      // A member already: restart the worker's stream if it stopped.
      if (this._state === "error" || this._state === "disconnected") this._send({ op: "connect" });
      return this;
    }
    if (this._member) return this; // joining
    this._generation += 1;
    this._setState("connecting");
    this._join(this._generation);
    return this;
  }

  disconnect() {
    if (this._local) return super.disconnect();
    this._generation += 1;
    this._leave();
    this._setState("disconnected");
    return this;
  }

  async _join(generation) {
    const member = randomId();
    this._member = member;
    const lock = `flask-sse-broker:${member}`;
    const release = await holdLock(lock);
    if (generation !== this._generation) {
      release?.();
      return;
    }
    this._releaseLock = release;
    const url = new URL(this.config.url, baseURL()).toString();
    // Tabs share a stream when they use the same URL and the same key (a
    // string `shared`), e.g. the logged-in user, so that a tab that logged
    // in as someone else does not join the previous user's stream.
    const key = typeof this.config.shared === "string" ? `${url} ${this.config.shared}` : url;
    let worker;
    try {
      worker = new SharedWorker(new URL("./shared-worker.js", import.meta.url), {
        type: "module",
        name: `flask-sse-broker ${key}`,
      });
    } catch (error) {
      this._log("no shared worker:", error);
      this._fallBack();
      return;
    }
    worker.onerror = (event) => {
      // The script could not be loaded or run: no tab can share.
      if (!this._welcomed && this._port === worker.port) this._fallBack(event);
    };
    this._port = worker.port;
    this._url = key;
    worker.port.onmessage = (event) => this._fromWorker(event.data);
    worker.port.start();
    const { topics, events, shared, ...config } = this.config;
    this._send({
      op: "join",
      lock: release ? lock : null,
      config: { ...config, url },
      topics: [...this._topics],
      names: this._allNames(),
      lastEventId: this._lastEventId,
    });
    if (!release) {
      // No Web Locks: tell the worker this tab is alive now and then.
      this._pinger = setInterval(() => this._send({ op: "ping" }), PING_INTERVAL);
    }
  }

  _allNames() {
    const names = new Set(["message"]);
    for (const type of this._handlers.keys()) for (const name of this._namesFor(type)) names.add(name);
    return [...names];
  }

  _leave() {
    if (this._port) {
      this._send({ op: "leave" });
      this._port.onmessage = null;
      this._port.close();
    }
    this._port = null;
    this._member = null;
    this._welcomed = false;
    clearInterval(this._pinger);
    this._pinger = null;
    this._releaseLock?.();
    this._releaseLock = null;
    for (const { reject } of this._replies.values()) {
      reject(new SSERequestError("the client disconnected", 0));
    }
    this._replies.clear();
  }

  /** The worker is unavailable: carry on with a stream of this tab's own. */
  _fallBack(reason) {
    this._log("falling back to a stream of this tab's own", reason ?? "");
    const pending = [...this._replies.values()];
    this._leave();
    this._local = true;
    this._generation += 1;
    super.connect();
    for (const { reject } of pending) reject(new SSERequestError("the shared stream is unavailable", 0));
  }

  _send(message) {
    this._port?.postMessage({ ...message, url: this._url, member: this._member });
  }

  _fromWorker(message) {
    this._welcomed = true;
    switch (message.kind) {
      case "unsupported":
        this._fallBack("the worker cannot open an EventSource");
        return;
      case "state":
        this._setState(message.state);
        return;
      case "error":
        this._emitError(message.info);
        return;
      case "reply":
        return this._onReply(message);
      case "connected": {
        const hello = message.data;
        this._clientId = hello.clientId ?? null;
        this._token = hello.token ?? this._token;
        this._heartbeat = Number(hello.heartbeat) || 0;
        if (hello.lastEventId) this._lastEventId = hello.lastEventId;
        this._topics = new Set(hello.topics || []);
        this._setState("connected");
        this._deliver("connected", this._message("connected", JSON.stringify(hello), hello.lastEventId));
        return;
      }
      case "event": {
        if (message.id) this._lastEventId = message.id;
        const msg = this._message(message.type, message.raw, message.id);
        if (message.type === "revoked") this._onRevoked(msg.data);
        this._deliver(message.type, msg);
        if (!CONTROL_EVENTS.includes(message.type)) this._deliver("*", msg);
        return;
      }
    }
  }

  _message(type, raw, id) {
    return { type, data: parseData(raw), id: id ?? this._lastEventId ?? "", raw };
  }

  _onReply({ id, topics, error }) {
    const waiting = this._replies.get(id);
    if (!waiting) return;
    this._replies.delete(id);
    if (error) {
      waiting.reject(new SSERequestError(error.message, error.status));
      return;
    }
    this._topics = new Set(topics);
    waiting.resolve(this.topics);
  }

  _changeTopics(action, topics) {
    if (this._local) return super._changeTopics(action, topics);
    if (!topics.length) return Promise.resolve(this.topics);
    if (!this._port) {
      // Not a member yet: the topics go with the join.
      for (const topic of topics) {
        if (action === "subscribe") this._topics.add(topic);
        else this._topics.delete(topic);
      }
      return Promise.resolve(this.topics);
    }
    return new Promise((resolve, reject) => {
      const id = ++this._requests;
      this._replies.set(id, { resolve, reject });
      this._send({ op: action, id, topics });
    });
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
      client = createSSEClient({ ...this._defaults, ...config });
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
  return config && config.shared ? new SharedSSEClient(config) : new SSEClient(config);
}
