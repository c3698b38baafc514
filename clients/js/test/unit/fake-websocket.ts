// An in-memory WebSocket for unit tests: the test plays the server.
import { vi } from "vitest";
import { TeamchatClient } from "../../src/index.js";
import type { ClientOptions } from "../../src/index.js";

export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  static decode: (data: unknown) => unknown = (data) => JSON.parse(String(data));
  static encode: (frame: object) => unknown = (frame) => JSON.stringify(frame);

  readyState = 0;
  binaryType = "blob";
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: unknown[] = [];
  closedWith: { code?: number; reason?: string } | undefined;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeWebSocket.instances.push(this);
  }

  static get last(): FakeWebSocket {
    const socket = FakeWebSocket.instances.at(-1);
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }

  send(data: string | Uint8Array): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  /** Frames the client sent, decoded. */
  frames(type?: string): Record<string, unknown>[] {
    const all = this.sent.map((data) => FakeWebSocket.decode(data) as Record<string, unknown>);
    return type === undefined ? all : all.filter((f) => f.type === type);
  }

  lastFrame(type: string): Record<string, unknown> {
    const frame = this.frames(type).at(-1);
    if (!frame) throw new Error(`no ${type} was sent`);
    return frame;
  }

  /** Opens and sends `session:welcome`. */
  welcome(user = "u1", heartbeatMs = 25_000): void {
    this.readyState = 1;
    this.onopen?.({});
    this.receive({ type: "session:welcome", user, session: "s1", heartbeat_ms: heartbeatMs, max_frame: 1_048_576 });
  }

  receive(frame: object): void {
    this.onmessage?.({ data: FakeWebSocket.encode(frame) });
  }

  /** Answers the last `room:join` for the team like the gateway: joined, replay, lists. */
  answerJoin(team: string, joined: { epoch?: string; offset?: string; seq?: number; recovered?: boolean }, replay: object[] = []): void {
    const join = this.frames("room:join").filter((f) => f.team === team).at(-1);
    if (!join) throw new Error(`no room:join for ${team}`);
    this.receive({ type: "room:joined", team, epoch: "e1", offset: "0", seq: 0, ...joined, rid: join.rid });
    for (const event of replay) this.receive(event);
    this.receive({ type: "presence:list", team, users: [] });
    this.receive({ type: "receipt:list", team, receipts: [] });
  }

  /** The server closes the connection. */
  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/** Lets pending promise callbacks run (works with fake timers too). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

export function newClient(options: Partial<ClientOptions> = {}): TeamchatClient {
  return new TeamchatClient({ url: "ws://gw.test/ws", token: "t", WebSocket: FakeWebSocket, ...options });
}

/** A connected client that joined `team` (epoch e1, offset 0). */
export async function joinedClient(team = "t1", options: Partial<ClientOptions> = {}): Promise<TeamchatClient> {
  const client = newClient(options);
  client.connect();
  await settle();
  FakeWebSocket.last.welcome();
  const joined = client.join(team);
  FakeWebSocket.last.answerJoin(team, {});
  await joined;
  return client;
}

export function resetFakes(): void {
  FakeWebSocket.instances = [];
  FakeWebSocket.decode = (data) => JSON.parse(String(data));
  FakeWebSocket.encode = (frame) => JSON.stringify(frame);
  vi.useRealTimers();
  vi.restoreAllMocks();
}

export function message(team: string, offset: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "message:new",
    team,
    seq: offset,
    id: `m${offset}`,
    client_id: `other-${offset}`,
    user: "u2",
    name: "U2",
    body: `body ${offset}`,
    meta: null,
    ts: 1,
    offset: String(offset),
    ...extra,
  };
}
