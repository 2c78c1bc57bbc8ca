/**
 * Type declarations for flask-sse-broker's browser client (`/_sse/client.js`).
 *
 * TypeScript setup. The client is served by your app at run time, so tell
 * the compiler where its declarations are: save this file (it is also served
 * at `/_sse/client.d.ts`) as `types/flask-sse-broker/client.d.ts` beside your
 * tsconfig.json, and map the import path to it there:
 *
 * BEGIN tsconfig.json
 * {
 *   "compilerOptions": {
 *     "paths": { "/_sse/client.js": ["./types/flask-sse-broker/client.d.ts"] }
 *   }
 * }
 * END tsconfig.json
 *
 * Then `import { connectSSE } from "/_sse/client.js";` type-checks, and the
 * import is left as it is for the browser (any `moduleResolution`). A
 * `declare module "/_sse/client.js"` block does NOT work: TypeScript treats a
 * name starting with "/" as relative (errors TS2436 and TS2439).
 */

/** The connection state reported by {@link SSEClient.onStateChange}. */
export type SSEState = "connecting" | "connected" | "disconnected" | "error";

export interface SSEConfig {
  /** The stream URL. Subscribe/unsubscribe URLs are derived from it. Default `"/_sse/connect"`. */
  url?: string;
  /** Topics to subscribe to when connecting. Default `[]`. */
  topics?: string[];
  /** Reconnect after a lost connection. Default `true`. */
  autoReconnect?: boolean;
  /** Attempts after a failure before giving up with state `"error"`; `0` = unlimited. Default `5`. */
  maxRetries?: number;
  /** First backoff delay in ms; doubles per attempt, jittered. Default `1000`. */
  reconnectDelay?: number;
  /** Cap of the backoff delay in ms. Default `30000`. */
  maxReconnectDelay?: number;
  /**
   * Heartbeat period in ms assumed until the server announces its own (in the
   * `connected` event). No event for two periods (plus 1 s) closes and
   * reconnects the stream. Default `30000`.
   */
  heartbeatInterval?: number;
  /** Send cookies on a cross-origin stream. Default `false`. */
  withCredentials?: boolean;
  /** Initial cursor, e.g. `broker.last_event_id()` embedded in the page. Default `null`. */
  lastEventId?: string | null;
  /** Log to `console.debug`. Default `false`. */
  debug?: boolean;
  /** Extra event names the `"*"` wildcard should see. Default `[]`. */
  events?: string[];
  /**
   * Share one stream among all tabs of the origin that use the same `url`,
   * held by a SharedWorker (`/_sse/shared-worker.js`): the server sees one
   * connection however many tabs are open. Each tab keeps this whole API and
   * receives only events of its own topics, plus broadcasts and direct sends.
   * Where SharedWorker is missing, the client opens a stream of its own.
   *
   * A string shares the stream only among tabs that give the same string:
   * when the client id follows the logged-in user (`identify`), pass
   * something that changes with the login (e.g. the user id), so a tab that
   * logged in as someone else does not join the previous user's stream.
   * Default `false`.
   */
  shared?: boolean | string;
}

/** One event as handlers receive it. */
export interface SSEMessage<T = unknown> {
  /** The event name (`"message"` for unnamed events). */
  type: string;
  /** The data, `JSON.parse`d (the raw string if it is not JSON). */
  data: T;
  /** The event id (the stream's last id for events without one). */
  id: string;
  /** The data as received. */
  raw: string;
}

/** Data of the `connected` event. */
export interface SSEConnectedData {
  clientId: string;
  token: string;
  topics: string[];
  lastEventId: string | null;
  /** The server's heartbeat period in ms (`0`: no heartbeats). */
  heartbeat: number;
}

/** Data of the `reset` event: events may have been missed; reload state. */
export interface SSEResetData {
  lastEventId: string | null;
}

/** Data of the `revoked` event: topics the server took away from this client. */
export interface SSERevokedData {
  topics: string[];
}

/** What {@link SSEClient.onError} handlers receive. */
export interface SSEErrorInfo {
  message: string;
  /** The HTTP status when one is known (`0`/`null` otherwise). */
  status: number | null;
  /** `true` when the client stopped (state `"error"`). */
  fatal: boolean;
  /** The retry attempt this error led to (or that was spent). */
  attempt: number;
  /** Delay in ms before the next attempt, `null` when none follows. */
  retryIn: number | null;
}

export type SSEHandler<T = unknown> = (message: SSEMessage<T>) => void;
export type Unsubscribe = () => void;

/** Well-known event names and their data types. */
export interface SSEEventMap {
  connected: SSEConnectedData;
  reset: SSEResetData;
  revoked: SSERevokedData;
  notification: unknown;
  update: { key: string; value: unknown };
  alert: { level: string; message: string };
  progress: { progress: number; message: string };
}

export declare const DEFAULT_CONFIG: Readonly<Required<SSEConfig>>;

/** Rejection of {@link SSEClient.subscribe} / {@link SSEClient.unsubscribe}. */
export declare class SSERequestError extends Error {
  readonly status: number;
  constructor(message: string, status: number);
}

export declare class SSEClient {
  constructor(config?: SSEConfig);
  readonly config: Required<SSEConfig>;
  readonly state: SSEState;
  readonly clientId: string | null;
  readonly lastEventId: string | null;
  readonly topics: string[];
  /**
   * Whether this client's events come through the shared stream of the
   * SharedWorker: `false` for a stream of its own, also when `shared` was
   * asked for where SharedWorker is missing (or before `connect()` found out
   * the worker cannot run).
   */
  readonly shared: boolean;

  on<K extends keyof SSEEventMap>(type: K, handler: SSEHandler<SSEEventMap[K]>): Unsubscribe;
  on<T = unknown>(type: string, handler: SSEHandler<T>): Unsubscribe;
  onMessage<T = unknown>(handler: SSEHandler<T>): Unsubscribe;
  onError(handler: (error: SSEErrorInfo) => void): Unsubscribe;
  onStateChange(handler: (state: SSEState, previous: SSEState) => void): Unsubscribe;

  connect(): this;
  disconnect(): this;
  subscribe(...topics: string[]): Promise<string[]>;
  unsubscribe(...topics: string[]): Promise<string[]>;
}

export declare class SSEManager {
  setDefaultConfig(config: SSEConfig): this;
  client(name: string, config?: SSEConfig): SSEClient;
  connect(name: string, config?: SSEConfig): SSEClient;
  disconnect(name: string): void;
  disconnectAll(): void;
  remove(name: string): boolean;
  has(name: string): boolean;
  getClientNames(): string[];
}

export declare function getSSEManager(): SSEManager;
export declare function connectSSE(name: string, config?: SSEConfig): SSEClient;
export declare function createSSEClient(config?: SSEConfig): SSEClient;
