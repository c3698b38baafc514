// The test: 1,000 messages sent through gateway A while A is SIGKILLed and
// restarted twice; a receiver on gateway B gets every one exactly once, in order.
import WebSocket from "ws";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { MessageAck, TeamchatClient } from "../../src/index.js";
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

it("delivers 1,000 messages exactly once, in order, across gateway kills", async () => {
  const [a, b] = stack.gateways as [typeof stack.gateways[0], typeof stack.gateways[0]];
  const team = `${stack.prefix}-failover`;
  let sendFrames = 0;
  class CountingWebSocket extends WebSocket {
    override send(data: string): void {
      if (data.includes('"type":"message:send"')) sendFrames++;
      super.send(data);
    }
  }
  const sender = clientFor(stack, a, "alice", [team], { WebSocket: CountingWebSocket });
  const receiver = clientFor(stack, b, "bob", [team]);
  clients.push(sender, receiver);
  const received: string[] = [];
  const resets: unknown[] = [];
  const senderCloses: number[] = [];
  receiver.on("message", (m) => received.push(m.body));
  receiver.on("reset", (r) => resets.push(r));
  sender.on("reset", (r) => resets.push(r));
  sender.on("close", (c) => senderCloses.push(c.code));
  receiver.connect();
  sender.connect();
  await Promise.all([receiver.join(team), sender.join(team)]);

  const total = 1000;
  const window = 20;
  const bodies = Array.from({ length: total }, (_, i) => `message ${i}`);
  const acks: MessageAck[] = new Array<MessageAck>(total);
  let acked = 0;
  let next = 0;
  // `window` lanes; each send() is made in index order, so the outbox keeps that order.
  const lane = async () => {
    while (next < total) {
      const i = next++;
      acks[i] = await sender.send(team, bodies[i]!);
      acked++;
    }
  };
  const chaos = (async () => {
    for (const at of [250, 600]) {
      await until(() => acked >= at, `${at} acks`);
      await a.kill("SIGKILL");
      await a.start();
    }
  })();
  await Promise.all([...Array.from({ length: window }, lane), chaos]);

  expect(acked).toBe(total);
  // Sends in flight at the kills went out again (with their client_id).
  expect(sendFrames).toBeGreaterThan(total);
  expect(senderCloses.filter((code) => code === 1006).length).toBeGreaterThanOrEqual(2);
  // Acks in send order carry increasing seqs: nothing was reordered or sent twice.
  for (let i = 1; i < total; i++) expect(acks[i]!.seq).toBe(acks[i - 1]!.seq + 1);

  await until(() => received.length >= total, "the receiver to get every message");
  // Anything duplicated would arrive right behind; give it the time to.
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(received).toEqual(bodies);
  expect(resets).toEqual([]);
});
