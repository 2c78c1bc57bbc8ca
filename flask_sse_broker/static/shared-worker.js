/**
 * flask-sse-broker shared stream: a SharedWorker (ES module, no build step)
 * that holds ONE event stream for every tab of the origin using the same
 * stream URL. Tabs reach it through `connectSSE(name, { shared: true })`;
 * nothing here is meant to be used directly.
 *
 * The stream is an SSEClient of `client.js`, so reconnection, backoff, the
 * heartbeat watchdog, stopping on 4xx and Last-Event-ID resume are the very
 * code a tab runs on its own. It asks the server for a shared stream
 * (`shared=1`), on which each published event's data starts with a line
 * naming its topic (`null` for broadcasts and direct sends): events do not
 * otherwise say which topic they were published to, and the worker must hand
 * each tab only what it is for.
 *
 * Per tab (a "member": one shared client of one page) the worker keeps its
 * topics and the event names it listens to. The stream's topics are the union
 * of the members' topics: a member's subscribe() of a topic nobody holds is
 * POSTed to /subscribe with the shared token; an unsubscribe (or the member
 * going away) of a topic nobody else holds is POSTed to /unsubscribe.
 *
 * Routing an event: broadcasts and direct sends go to every member; a topic
 * event to the members holding the topic or a pattern matching it. A topic no
 * member holds and none has dropped was subscribed on the server
 * (`broker.subscribe(client_id, ...)`): every member gets it, as every tab of
 * a client would.
 *
 * A tab that goes away must release its topics, but a MessagePort says
 * nothing when its page dies. Each member holds a Web Lock for its life; the
 * browser frees a dead page's locks (closed, crashed or navigated away), and
 * the worker's request for that lock is then granted: the member is gone.
 * Without the Web Locks API, members ping and are dropped after
 * MEMBER_TIMEOUT of silence (generous: hidden tabs' timers are throttled).
 */

import { SSEClient } from "./client.js";

/** A member silent this long is gone (only without the Web Locks API). */
const MEMBER_TIMEOUT = 180000;
/** Events kept for tabs joining a running stream (see Hub.catchUp). */
const RECENT_EVENTS = 500;
/** Events the stream client handles itself and the worker relays. */
const CONTROL = new Set(["connected", "heartbeat", "reset", "revoked"]);

/** Whether `topic` (an event's topic) is matched by the subscription `sub`
 * (a topic or a pattern: `*` one segment, a trailing `**` one or more). */
export function matches(sub, topic) {
  if (sub === topic) return true;
  if (!sub.includes("*")) return false;
  const want = sub.split("/");
  const have = topic.split("/");
  for (let i = 0; i < want.length; i++) {
    if (want[i] === "**" && i === want.length - 1) return have.length > i;
    if (i >= have.length) return false;
    if (want[i] !== "*" && want[i] !== have[i]) return false;
  }
  return want.length === have.length;
}

/** Compare two event ids of the form `<int>-<int>` (both backends' shape):
 * -1, 0 or 1; `null` when either is not of that form. */
export function compareIds(a, b) {
  const pattern = /^(\d+)-(\d+)$/;
  const x = pattern.exec(a ?? "");
  const y = pattern.exec(b ?? "");
  if (!x || !y) return null;
  for (const i of [1, 2]) {
    const [p, q] = [BigInt(x[i]), BigInt(y[i])];
    if (p !== q) return p < q ? -1 : 1;
  }
  return 0;
}

function matchesAny(subs, topic) {
  for (const sub of subs) if (matches(sub, topic)) return true;
  return false;
}

/** One shared stream and the members it serves. */
class Hub {
  constructor(url, config, onEmpty) {
    this.url = url;
    this.members = new Map(); // member id -> {port, topics, names, seen, abort}
    this.dropped = new Set(); // topics members gave up and nobody holds
    this.listening = new Set(); // event names the stream client listens to
    this.onEmpty = onEmpty;
    this.ops = Promise.resolve(); // topic changes, one at a time, in order
    this.recent = []; // the last RECENT_EVENTS routed events, {seq, type, raw, id, topic}
    this.seq = 0;
    this.evicted = null; // id of the newest event that left `recent`
    const client = new SSEClient({ ...config, topics: [], shared: false });
    client._sharedStream = true;
    client.onStateChange((state) => {
      // `connected` reaches members with their hello (below), so a tab's
      // state and clientId change together.
      if (state !== "connected") this.broadcast({ kind: "state", state });
    });
    client.onError((info) => this.broadcast({ kind: "error", info }));
    client.on("connected", () => {
      for (const member of this.members.values()) this.hello(member);
    });
    client.on("reset", (message) => this.relay("reset", message, this.members.values()));
    client.on("revoked", (message) => this.revoked(message));
    this.client = client;
  }

  held(topic) {
    for (const member of this.members.values()) if (member.topics.has(topic)) return true;
    return false;
  }

  join(port, message) {
    const member = {
      id: message.member,
      port,
      topics: new Set(),
      names: new Set(),
      seen: Date.now(),
      abort: null,
      joining: true, // live events wait in `recent` until catchUp()
    };
    this.members.set(member.id, member);
    this.listen(member, message.names || []);
    if (message.lock && globalThis.navigator?.locks) {
      // Granted when the member's page frees the lock: it is gone.
      const abort = new AbortController();
      member.abort = abort;
      navigator.locks
        .request(message.lock, { signal: abort.signal }, () => this.leave(member.id))
        .catch(() => {}); // aborted: the member left first
    }
    const client = this.client;
    const topics = message.topics || [];
    if (client.state === "disconnected" && !this.started) {
      // The first member opens the stream, from its cursor, with its topics.
      member.joining = false;
      for (const topic of topics) member.topics.add(topic);
      client._topics = new Set(topics);
      client._lastEventId = message.lastEventId || null;
      this.started = true;
      client.connect();
      return;
    }
    const since = this.seq;
    const done = () => {
      if (client.state === "connected") this.hello(member);
      else this.send(member, { kind: "state", state: client.state });
      this.catchUp(member, message.lastEventId, since);
      if (client.state === "error" || client.state === "disconnected") client.connect();
    };
    this.change(member, "subscribe", topics).then(done, (error) => {
      this.send(member, { kind: "error", info: errorInfo(error) });
      done();
    });
  }

  /**
   * A member joined a running stream: send it, from the events the stream
   * received recently, those for it after its cursor (a page embedding
   * `broker.last_event_id()` misses nothing published since its render), or
   * without a cursor those that arrived while it was joining. A cursor older
   * than what is kept, or not comparable, gets `reset`. Events of topics
   * the stream did not hold before the tab joined were never received here:
   * a tab subscribing to new topics gets those from its join on.
   */
  catchUp(member, cursor, since) {
    let events = this.recent.filter((event) => event.seq > since);
    const current = this.client.lastEventId;
    if (cursor && cursor !== current) {
      const order = compareIds(cursor, current);
      if (order === null || (order < 0 && this.evicted && compareIds(cursor, this.evicted) < 0)) {
        const data = JSON.stringify({ lastEventId: current });
        this.send(member, { kind: "event", type: "reset", raw: data, id: current });
      } else if (order < 0) {
        events = this.recent.filter((event) => compareIds(event.id, cursor) > 0);
      }
    }
    member.joining = false;
    for (const event of events) {
      if (this.routes(event.topic, member)) this.relay(event.type, event, [member]);
    }
  }

  /** Whether an event of `topic` goes to `member`. */
  routes(topic, member) {
    if (topic === null || topic === undefined) return true;
    if (matchesAny(member.topics, topic)) return true;
    // A topic no member holds or dropped: subscribed on the server.
    if (matchesAny(this.dropped, topic)) return false;
    for (const other of this.members.values()) if (matchesAny(other.topics, topic)) return false;
    return true;
  }

  /** Tell a member the stream is up, with its own topics. */
  hello(member) {
    const client = this.client;
    const data = {
      clientId: client.clientId,
      token: client._token,
      topics: [...member.topics].sort(),
      lastEventId: client.lastEventId,
      heartbeat: client._heartbeat,
    };
    this.send(member, { kind: "connected", data });
  }

  listen(member, names) {
    for (const name of names) {
      member.names.add(name);
      if (CONTROL.has(name) || this.listening.has(name)) continue;
      this.listening.add(name);
      this.client.on(name, (message) => this.route(name, message));
    }
  }

  route(type, message) {
    const event = { seq: ++this.seq, type, raw: message.raw, id: message.id, topic: message.topic };
    this.recent.push(event);
    if (this.recent.length > RECENT_EVENTS) this.evicted = this.recent.shift().id;
    const members = [...this.members.values()].filter(
      (member) => !member.joining && this.routes(event.topic, member),
    );
    this.relay(type, event, members);
  }

  relay(type, message, members) {
    const out = { kind: "event", type, raw: message.raw, id: message.id };
    for (const member of members) {
      if (CONTROL.has(type) || member.names.has(type)) this.send(member, out);
    }
  }

  revoked(message) {
    const topics = (message.data && message.data.topics) || [];
    for (const topic of topics) this.dropped.add(topic);
    for (const member of this.members.values()) {
      const theirs = topics.filter((topic) => member.topics.delete(topic));
      if (!theirs.length) continue;
      const raw = JSON.stringify({ ...message.data, topics: theirs });
      this.send(member, { kind: "event", type: "revoked", raw, id: message.id });
    }
  }

  /** Apply a member's topic change to the stream; resolves to its topics. */
  change(member, action, topics) {
    const run = async () => {
      if (!this.members.has(member.id)) return [];
      if (action === "subscribe") {
        const fresh = topics.filter((topic) => !this.held(topic));
        const added = topics.filter((topic) => !member.topics.has(topic));
        for (const topic of topics) member.topics.add(topic);
        if (fresh.length) {
          try {
            await this.client.subscribe(...fresh);
          } catch (error) {
            for (const topic of added) member.topics.delete(topic);
            throw error;
          }
          for (const topic of fresh) this.dropped.delete(topic);
        }
      } else {
        for (const topic of topics) member.topics.delete(topic);
        await this.release(topics);
      }
      return [...member.topics].sort();
    };
    const result = this.ops.then(run, run);
    this.ops = result.catch(() => {});
    return result;
  }

  /** Unsubscribe the stream from those of `topics` no member holds now. */
  async release(topics) {
    const orphaned = topics.filter((topic) => !this.held(topic));
    for (const topic of orphaned) this.dropped.add(topic);
    if (!orphaned.length || !this.members.size) return;
    try {
      await this.client.unsubscribe(...orphaned);
    } catch (error) {
      // The events are no longer routed to anyone; the server's copy of the
      // subscription ends with the stream at the latest.
      this.client._log("could not unsubscribe", orphaned, error);
    }
  }

  leave(id) {
    const member = this.members.get(id);
    if (!member) return;
    this.members.delete(id);
    member.abort?.abort();
    if (!this.members.size) {
      this.client.disconnect();
      this.onEmpty(this);
      return;
    }
    const topics = [...member.topics];
    this.ops = this.ops.then(() => this.release(topics));
  }

  sweep(now) {
    for (const member of [...this.members.values()]) {
      if (!member.abort && now - member.seen > MEMBER_TIMEOUT) this.leave(member.id);
    }
  }

  send(member, message) {
    try {
      member.port.postMessage(message);
    } catch {
      this.leave(member.id);
    }
  }

  broadcast(message) {
    for (const member of this.members.values()) this.send(member, message);
  }

  handle(member, message) {
    member.seen = Date.now();
    switch (message.op) {
      case "subscribe":
      case "unsubscribe":
        this.change(member, message.op, message.topics || []).then(
          (topics) => this.send(member, { kind: "reply", id: message.id, topics }),
          (error) => this.send(member, { kind: "reply", id: message.id, error: errorInfo(error) }),
        );
        return;
      case "names":
        this.listen(member, message.names || []);
        return;
      case "connect":
        if (this.client.state === "error" || this.client.state === "disconnected") this.client.connect();
        return;
      case "leave":
        this.leave(member.id);
        return;
    }
  }
}

function errorInfo(error) {
  return { message: String(error?.message ?? error), status: error?.status ?? null };
}

/** Hub key -> hub. A worker is named after its key, so normally one. */
const hubs = new Map();

function receive(port, message) {
  if (!message || typeof message !== "object") return;
  if (message.op === "join") {
    if (typeof EventSource !== "function") {
      port.postMessage({ kind: "unsupported" });
      return;
    }
    let hub = hubs.get(message.url);
    if (!hub) {
      // `message.url` is the hub's key: the stream URL, plus the string given
      // as `shared`; the stream URL itself is `config.url`.
      hub = new Hub(message.url, message.config, (empty) => {
        if (hubs.get(empty.url) === empty) hubs.delete(empty.url);
      });
      hubs.set(message.url, hub);
    }
    hub.join(port, message);
    return;
  }
  const hub = hubs.get(message.url);
  const member = hub?.members.get(message.member);
  if (member) hub.handle(member, message);
}

globalThis.onconnect = (event) => {
  const port = event.ports[0];
  port.onmessage = (message) => receive(port, message.data);
  port.start();
};

setInterval(() => {
  const now = Date.now();
  for (const hub of hubs.values()) hub.sweep(now);
}, MEMBER_TIMEOUT / 4);
