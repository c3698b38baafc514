// A lost team stream (its Redis keys gone) makes the gateway close the team's connections
// 1012 and answer their rejoin recovered:false: the client emits `reset`.
import { afterAll, beforeAll, expect, it } from "vitest";
import type { TeamchatClient } from "../../src/index.js";
import { deleteKeys } from "../support/redis.js";
import { startStack, type Stack } from "../support/stack.js";
import { clientFor, until } from "./helpers.js";

let stack: Stack;
const clients: TeamchatClient[] = [];

beforeAll(async () => {
  stack = await startStack({ gateways: 1 });
});

afterAll(async () => {
  for (const client of clients) client.close();
  await stack?.stop();
});

it("emits reset when the team's stream was lost, then goes on in the new epoch", async () => {
  const [gateway] = stack.gateways as [typeof stack.gateways[0]];
  const team = `${stack.prefix}-reset`;
  const alice = clientFor(stack, gateway, "alice", [team]);
  const bob = clientFor(stack, gateway, "bob", [team]);
  clients.push(alice, bob);
  const received: string[] = [];
  const resets: unknown[] = [];
  const closes: number[] = [];
  bob.on("message", (m) => received.push(m.body));
  bob.on("reset", (r) => resets.push(r));
  bob.on("close", (c) => closes.push(c.code));
  alice.connect();
  bob.connect();
  await Promise.all([alice.join(team), bob.join(team)]);
  for (const body of ["one", "two", "three"]) await alice.send(team, body);
  await until(() => received.length === 3, "the first messages");
  const before = bob.lastOffset(team)!;

  // The room notices within TAIL_CHECK_MS (1 s) that the stream's top went back.
  const deleted = await deleteKeys(stack.redisUrl, `${stack.prefix}:{s*}:team:${team}:*`);
  expect(deleted).toBeGreaterThan(0);
  await until(() => resets.length > 0, "reset");

  expect(closes).toContain(1012);
  expect(resets).toEqual([{ team, reason: "stream_lost" }]);
  expect(bob.lastOffset(team)!.epoch).not.toBe(before.epoch);
  await alice.join(team); // alice's rejoin may still be under way
  await alice.send(team, "after");
  await until(() => received.length === 4, "a message of the new epoch");
  expect(received).toEqual(["one", "two", "three", "after"]);
});
