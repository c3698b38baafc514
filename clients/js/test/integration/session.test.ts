// The rest against a real gateway: bad tokens, token refresh, msgpack, typing, receipts,
// presence, edits, deletes and history.
import WebSocket from "ws";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TeamchatClient, type ErrorFrame } from "../../src/index.js";
import { signToken, startStack, type Stack } from "../support/stack.js";
import { clientFor, sleep, until } from "./helpers.js";

let stack: Stack;
const clients: TeamchatClient[] = [];

beforeAll(async () => {
  // No leeway: a token that is not refreshed in time closes the connection at its exp.
  stack = await startStack({ gateways: 1, env: { TOKEN_LEEWAY_S: "0" } });
});

afterAll(async () => {
  for (const client of clients) client.close();
  await stack?.stop();
});

describe("auth", () => {
  for (const [what, token] of [
    ["a malformed token", () => "not.a.jwt"],
    ["a token of another secret", () => signToken("wrong", { sub: "eve", teams: [], exp: Math.floor(Date.now() / 1000) + 60 })],
  ] as const) {
    it(`closes for good after 4001 with ${what}, without a reconnect loop`, async () => {
      let sockets = 0;
      class CountingWebSocket extends WebSocket {
        constructor(url: string, protocols?: string | string[]) {
          super(url, protocols);
          sockets++;
        }
      }
      const client = new TeamchatClient({
        url: stack.gateways[0]!.wsUrl,
        token: token(),
        WebSocket: CountingWebSocket,
        reconnect: { baseMs: 10, maxMs: 20 },
      });
      clients.push(client);
      const errors: ErrorFrame[] = [];
      const closes: number[] = [];
      client.on("error", (e) => errors.push(e));
      client.on("close", (c) => closes.push(c.code));
      client.connect();
      await until(() => client.state === "closed", "the client to give up");
      await sleep(500);
      expect(sockets).toBe(1);
      expect(closes).toEqual([4001]);
      expect(errors).toMatchObject([{ code: "unauthorized", close: 4001 }]);
    });
  }

  it("refreshes a short token before it expires", async () => {
    const team = `${stack.prefix}-refresh`;
    let tokens = 0;
    const client = clientFor(stack, stack.gateways[0]!, "carol", [team], {
      token: undefined,
      getToken: () => {
        tokens++;
        return stack.token("carol", [team], 3);
      },
    });
    clients.push(client);
    const closes: number[] = [];
    client.on("close", (c) => closes.push(c.code));
    client.connect();
    await client.join(team);
    await sleep(4_500);
    expect(closes).toEqual([]);
    expect(client.state).toBe("open");
    expect(tokens).toBeGreaterThanOrEqual(2);
  });
});

describe("a conversation", () => {
  it("carries typing, messages, receipts, presence, edits and deletes; history has them", async () => {
    const gateway = stack.gateways[0]!;
    const team = `${stack.prefix}-talk`;
    const alice = clientFor(stack, gateway, "alice", [team], { codec: "msgpack" });
    const bob = clientFor(stack, gateway, "bob", [team]);
    clients.push(alice, bob);
    const log: string[] = [];
    alice.on("typing", (t) => log.push(`typing ${t.user} ${t.typing}`));
    alice.on("message", (m) => log.push(`message ${m.user} ${m.body} ${JSON.stringify(m.meta)}`));
    alice.on("edit", (e) => log.push(`edit ${e.seq} ${e.body}`));
    alice.on("delete", (d) => log.push(`delete ${d.seq}`));
    const receipts: string[] = [];
    bob.on("receipt", (r) => receipts.push(`${r.user} ${r.seq}`));
    alice.connect();
    await alice.join(team);
    bob.connect();
    await bob.join(team);
    await until(() => alice.presence(team).has("bob"), "alice to see bob online");
    expect(bob.presence(team).get("alice")).toMatchObject({ name: "ALICE" });

    bob.typing(team);
    const first = await bob.send(team, "hello", { lang: "en" });
    const second = await bob.send(team, "to delete");
    await until(() => log.length >= 4, "typing and messages");
    alice.markRead(team, first.seq); // goes out at once
    alice.markRead(team, second.seq); // a second later
    await until(() => receipts.length === 2, "the receipts");
    expect(receipts).toEqual([`alice ${first.seq}`, `alice ${second.seq}`]);
    await bob.edit(team, first.seq, "hello, all");
    await bob.delete(team, second.seq);
    await until(() => log.length >= 6, "edit and delete");
    expect(log).toEqual([
      "typing bob true",
      "typing bob false",
      'message bob hello {"lang":"en"}',
      "message bob to delete null",
      `edit ${first.seq} hello, all`,
      `delete ${second.seq}`,
    ]);

    const page = await alice.history(team, { limit: 10 });
    expect(page.has_more).toBe(false);
    expect(page.messages.map((m) => [m.seq, m.body, m.deleted, m.edited_at !== null])).toEqual([
      [second.seq, "", true, false],
      [first.seq, "hello, all", false, true],
    ]);
    await expect(alice.history("not-mine")).rejects.toMatchObject({ code: "forbidden", status: 403 });

    await bob.leave(team);
    await until(() => !alice.presence(team).has("bob"), "bob to go offline");
  });
});
