// Type-checked with `npx tsc --noEmit -p tests/ts`: every public name of the
// browser client used the way the README shows, plus misuses that must fail.
import {
  DEFAULT_CONFIG,
  SSEClient,
  SSEManager,
  SSERequestError,
  connectSSE,
  createSSEClient,
  getSSEManager,
  type SSEConfig,
  type SSEErrorInfo,
  type SSEMessage,
  type SSEState,
} from "../../flask_sse_broker/static/client";

const config: SSEConfig = {
  url: "/_sse/connect",
  topics: ["orders"],
  autoReconnect: true,
  maxRetries: 0,
  reconnectDelay: 500,
  maxReconnectDelay: 10_000,
  heartbeatInterval: 15_000,
  withCredentials: false,
  lastEventId: "1795733545487358-12",
  debug: true,
  events: ["order"],
  shared: true,
};

const sse: SSEClient = connectSSE("main", config);

interface Order {
  id: number;
  total: number;
}

const off: () => void = sse.on<Order>("order", (msg) => {
  const total: number = msg.data.total;
  const id: string = msg.id;
  const raw: string = msg.raw;
  console.log(total, id, raw);
});
off();

sse.on("progress", (msg) => {
  const percent: number = msg.data.progress;
  console.log(percent, msg.data.message);
});
sse.on("alert", (msg) => console.log(msg.data.level.toUpperCase()));
sse.on("connected", (msg) => console.log(msg.data.clientId, msg.data.heartbeat));
sse.on("reset", (msg) => console.log(msg.data.lastEventId));
sse.on("revoked", (msg) => console.log(msg.data.topics.join(",")));
const isShared: boolean = sse.shared;
console.log(isShared);
sse.on("*", (msg: SSEMessage) => console.log(msg.type));
sse.onMessage((msg) => console.log(msg.data));
sse.onError((error: SSEErrorInfo) => {
  if (error.fatal && error.status === 403) console.log(error.message, error.retryIn, error.attempt);
});
sse.onStateChange((state: SSEState, previous: SSEState) => console.log(previous, "->", state));

const state: SSEState = sse.state;
const clientId: string | null = sse.clientId;
const lastEventId: string | null = sse.lastEventId;
const topics: string[] = sse.topics;
console.log(state, clientId, lastEventId, topics, DEFAULT_CONFIG.maxRetries);

async function toggle(): Promise<void> {
  try {
    const now: string[] = await sse.subscribe("alerts", "news");
    console.log(now, await sse.unsubscribe("news"));
  } catch (error) {
    if (error instanceof SSERequestError) console.log(error.status);
  }
}
void toggle();

const manager: SSEManager = getSSEManager();
manager.setDefaultConfig({ autoReconnect: true }).setDefaultConfig({ debug: false });
const logs: SSEClient = manager.client("logs", { url: "/_sse/connect", topics: ["logs"] });
manager.connect("logs");
manager.disconnect("logs");
const names: string[] = manager.getClientNames();
const present: boolean = manager.has("logs") && manager.remove("logs");
manager.disconnectAll();
console.log(logs.connect().disconnect().state, names, present);

const standalone: SSEClient = createSSEClient();
standalone.connect();

// Misuses the declarations must reject.
// @ts-expect-error: not a state
const wrong: SSEState = "open";
// @ts-expect-error: maxRetries is a number
createSSEClient({ maxRetries: "5" });
createSSEClient({ shared: "user-42" });
// @ts-expect-error: shared is a boolean or a key string
createSSEClient({ shared: 1 });
// @ts-expect-error: topics are strings
void sse.subscribe(42);
console.log(wrong);
