// The HTTP fallback against real gateways: a client whose WebSocket is blocked falls back
// to SSE by itself, and a client told to use long-polling chats the same way; both with a
// WebSocket client in the same team, messages in order, resumed after the link drops.
import WebSocket from "ws";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TeamchatClient, type MessageNew, type Transport } from "../../src/index.js";
import { startStack, type Stack } from "../support/stack.js";
import { clientFor, until } from "./helpers.js";

let stack: Stack;
const clients: TeamchatClient[] = [];

beforeAll(async () => {
  stack = await startStack({ gateways: 2 });
});

afterAll(async () => {
  for (const client of clients) client.close();
  await stack?.stop();
});

/** A WebSocket a proxy breaks: it never opens. */
class BlockedWebSocket {
  static attempts = 0;
  readyState = 3;
  binaryType = "arraybuffer";
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  constructor() {
    BlockedWebSocket.attempts++;
    setTimeout(() => {
      this.onerror?.({});
      this.onclose?.({ code: 1006, reason: "" });
    }, 5);
  }
  send(): void {}
  close(): void {}
}

function httpClient(user: string, team: string, options: { transports?: Transport[]; blocked?: boolean }): TeamchatClient {
  const client = new TeamchatClient({
    url: stack.gateways[1]!.wsUrl,
    token: stack.token(user, [team], 3600, user.toUpperCase()),
    WebSocket: options.blocked ? BlockedWebSocket : WebSocket,
    reconnect: { baseMs: 20, maxMs: 100 },
    ...(options.transports ? { transports: options.transports } : {}),
  });
  clients.push(client);
  return client;
}

async function chat(client: TeamchatClient, team: string): Promise<void> {
  const peer = clientFor(stack, stack.gateways[0]!, `peer-${client.transport}`, [team]);
  clients.push(peer);
  peer.connect();
  await peer.join(team);
  await client.join(team);
  const got: MessageNew[] = [];
  client.on("message", (m) => got.push(m));
  const peerGot: MessageNew[] = [];
  peer.on("message", (m) => peerGot.push(m));

  for (let i = 0; i < 20; i++) await peer.send(team, `to you ${i}`);
  await until(() => got.length === 20, "the peer's messages");
  expect(got.map((m) => m.body)).toEqual(Array.from({ length: 20 }, (_, i) => `to you ${i}`));
  const sent = await Promise.all([client.send(team, "back 1"), client.send(team, "back 2")]);
  expect(sent.map((a) => a.seq)).toEqual([21, 22]);
  await until(() => peerGot.length === 2, "the answers");
  expect(peerGot.map((m) => m.body)).toEqual(["back 1", "back 2"]);

  // The link drops (as a proxy would cut it): the client opens a new session and resumes
  // with since; what the peer sent meanwhile comes once.
  (client as unknown as { connection?: { close(code: number, reason: string): void } }).connection?.close(1006, "cut");
  await peer.send(team, "while away");
  await until(() => got.length === 21, "the message sent while away");
  expect(got.at(-1)!.body).toBe("while away");
  await until(() => client.state === "open", "the client to be back");
  await peer.send(team, "after");
  await until(() => got.length === 22, "the message after");
  expect(new Set(got.map((m) => m.seq)).size).toBe(got.length);
}

describe("HTTP fallback", () => {
  it("falls back to SSE when WebSocket is blocked", async () => {
    const team = `${stack.prefix}-sse`;
    const client = httpClient("ann", team, { blocked: true });
    const transports: Transport[] = [];
    client.on("transport", (t) => transports.push(t));
    client.connect();
    await until(() => client.state === "open", "the client to open over SSE");
    expect(client.transport).toBe("sse");
    expect(transports).toEqual(["sse"]);
    expect(BlockedWebSocket.attempts).toBe(2);
    await chat(client, team);
  });

  it("chats over long-polling", async () => {
    const team = `${stack.prefix}-poll`;
    const client = httpClient("bob", team, { transports: ["polling"] });
    client.connect();
    await until(() => client.state === "open", "the client to open over long-polling");
    await chat(client, team);
  });
});
