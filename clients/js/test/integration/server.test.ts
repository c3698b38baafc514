// The Node server-side helper against two real gateways, and what the browser client does
// with what the backend asks: a post arrives, `notify` is an event, a removal is a `left`
// event and no rejoin, a revocation is a fatal 4001 "revoked" without a reconnect loop.
import { isDeepStrictEqual } from "node:util";
import { generateKeyPairSync, verify } from "node:crypto";
import WebSocket from "ws";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TeamchatClient, type ErrorFrame, type MessageNew, type Notify } from "../../src/index.js";
import { TeamchatServer, TeamchatServerError, signToken } from "../../src/server.js";
import { startStack, type Stack } from "../support/stack.js";
import { sleep, until } from "./helpers.js";

const API_KEY = "an-api-key-for-the-client-tests-0123456789";

let stack: Stack;
let server: TeamchatServer;
const clients: TeamchatClient[] = [];

beforeAll(async () => {
  stack = await startStack({ gateways: 2, env: { API_KEYS: API_KEY } });
  server = new TeamchatServer({ url: stack.gateways[0]!.httpUrl, apiKey: API_KEY });
});

afterAll(async () => {
  for (const client of clients) client.close();
  await stack?.stop();
});

/** A client on the second gateway with a token signed by the helper. */
async function member(user: string, teams: string[]): Promise<TeamchatClient> {
  const client = new TeamchatClient({
    url: stack.gateways[1]!.wsUrl,
    token: signToken({ sub: user, teams, name: user.toUpperCase() }, { key: stack.secret }),
    WebSocket,
    reconnect: { baseMs: 10, maxMs: 20 },
  });
  clients.push(client);
  client.connect();
  for (const team of teams) await client.join(team);
  return client;
}

describe("server helper", () => {
  it("posts, reads the team and its history, and notifies", async () => {
    const team = `${stack.prefix}-post`;
    const ann = await member("ann", [team]);
    const messages: MessageNew[] = [];
    const notes: Notify[] = [];
    ann.on("message", (m) => messages.push(m));
    ann.on("notify", (n) => notes.push(n));

    const post = { user: "bot", name: "Bot", body: "deploy finished", client_id: "d1" };
    const ack = await server.publish(team, post);
    expect(ack).toMatchObject({ team, seq: 1, duplicate: false });
    expect(await server.publish(team, post)).toMatchObject({ seq: 1, duplicate: true });
    await until(() => messages.length === 1, "the post");
    expect(messages[0]).toMatchObject({ user: "bot", body: "deploy finished", seq: 1 });

    expect(await server.team(team)).toMatchObject({ team, seq: 1, online: 1 });
    expect((await server.presence(team)).users.map((u) => u.user)).toEqual(["ann"]);
    expect((await server.history(team, { limit: 10 })).messages.map((m) => m.body)).toEqual(["deploy finished"]);

    await server.notify("ann", { unread: 3 });
    await until(() => notes.length === 1, "the notification");
    expect(notes[0]).toEqual({ type: "notify", data: { unread: 3 } });
  });

  it("reports refusals with their status and code", async () => {
    const error = await server.publish(`${stack.prefix}-x`, { user: "no one", body: "b", client_id: "c" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TeamchatServerError);
    expect(error).toMatchObject({ status: 400, code: "bad_request" });
    const keyless = new TeamchatServer({ url: stack.gateways[0]!.httpUrl, apiKey: "wrong-key-of-enough-length-0123456789" });
    await expect(keyless.team(`${stack.prefix}-x`)).rejects.toMatchObject({ status: 401, code: "unauthorized" });
  });

  it("signs RS256, ES256 and EdDSA tokens a verifier accepts", () => {
    for (const [algorithm, type, digest] of [
      ["RS256", "rsa", "sha256"],
      ["ES256", "ec", "sha256"],
      ["EdDSA", "ed25519", null],
    ] as const) {
      const pair =
        type === "rsa"
          ? generateKeyPairSync("rsa", { modulusLength: 2048 })
          : type === "ec"
            ? generateKeyPairSync("ec", { namedCurve: "P-256" })
            : generateKeyPairSync("ed25519");
      const token = signToken({ sub: "ann", teams: ["t"] }, { algorithm, key: pair.privateKey, kid: "k1" });
      const [header, payload, signature] = token.split(".") as [string, string, string];
      expect(JSON.parse(Buffer.from(header, "base64url").toString())).toEqual({ alg: algorithm, typ: "JWT", kid: "k1" });
      const claims = JSON.parse(Buffer.from(payload, "base64url").toString()) as { iat: number; exp: number };
      expect(claims.exp - Math.floor(claims.iat)).toBe(3600);
      const key = type === "ec" ? { key: pair.publicKey, dsaEncoding: "ieee-p1363" as const } : pair.publicKey;
      expect(verify(digest, Buffer.from(`${header}.${payload}`), key, Buffer.from(signature, "base64url"))).toBe(true);
    }
  });
});

describe("the client and the backend", () => {
  it("forgets a team it was removed from and does not rejoin it", async () => {
    const [kept, removed] = [`${stack.prefix}-kept`, `${stack.prefix}-removed`];
    const ben = await member("ben", [kept, removed]);
    const left: { team: string; reason: string }[] = [];
    ben.on("left", (l) => left.push(l));
    await server.removeMember(removed, "ben");
    await until(() => left.length === 1, "room:left");
    expect(left).toEqual([{ team: removed, reason: "removed" }]);
    // Sending to it fails at once; the other team goes on.
    await expect(ben.send(removed, "still here?")).rejects.toMatchObject({ code: "not_joined" });
    const ack = await ben.send(kept, "still in this one");
    expect(ack.team).toBe(kept);
  });

  it("closes for good on a revocation, without a reconnect loop", async () => {
    const team = `${stack.prefix}-revoked`;
    const cleo = await member("cleo", [team]);
    const errors: ErrorFrame[] = [];
    const closes: { code: number; reason: string }[] = [];
    cleo.on("error", (e) => errors.push(e));
    cleo.on("close", (c) => closes.push(c));
    await server.revoke("cleo");
    await until(() => cleo.state === "closed", "the client to give up");
    expect(closes).toEqual([{ code: 4001, reason: "revoked" }]);
    expect(errors).toMatchObject([{ code: "revoked", close: 4001 }]);
    // A token issued after the revocation works.
    const again = await member("cleo", [team]);
    expect(again.state).toBe("open");
  });
});

describe("chat model", () => {
  it("carries mentions and attachments, and tells a mentioned user who has not joined", async () => {
    const team = `${stack.prefix}-mentions`;
    const ann = await member("ann", [team]);
    // Ben's token holds the team, but he has joined nothing: his app badges it.
    const benWatching = new TeamchatClient({
      url: stack.gateways[0]!.wsUrl,
      token: signToken({ sub: "ben", teams: [team] }, { key: stack.secret }),
      WebSocket,
    });
    clients.push(benWatching);
    const mentions: unknown[] = [];
    benWatching.on("mention", (m) => mentions.push(m));
    benWatching.connect();
    await until(() => benWatching.state === "open", "ben connected");
    const carl = await member("carl", [team]);
    const seen: MessageNew[] = [];
    carl.on("message", (m) => seen.push(m));

    const file = { url: "https://files.example.com/plan.pdf", name: "plan.pdf", mime: "application/pdf", size: 1200 };
    const ack = await ann.send(team, "@ben see the plan", undefined, { mentions: ["ben"], attachments: [file] });
    await until(() => mentions.length === 1 && seen.length === 1, "the mention and the message");
    expect(mentions[0]).toEqual({ type: "mention", team, seq: ack.seq, user: "ann", ts: ack.ts });
    expect(seen[0]).toMatchObject({ mentions: ["ben"], attachments: [file] });
    await expect(
      ann.send(team, "x", undefined, { attachments: [{ ...file, url: "javascript:alert(1)" }] }),
    ).rejects.toMatchObject({ code: "bad_request" });
  });

  it("pins, tells the others, and lists the pins once synced", async () => {
    const team = `${stack.prefix}-pins`;
    const ann = await member("ann", [team]);
    const ben = await member("ben", [team]);
    const pins: unknown[] = [];
    ben.on("pin", (p) => pins.push(p));
    const first = await ann.send(team, "the plan");
    const pinned = await ann.pin(team, first.seq);
    expect(pinned.offset).toBeDefined();
    expect((await ann.pin(team, first.seq)).offset).toBeUndefined();
    await until(() => pins.length === 1, "the pin event");
    expect(pins[0]).toMatchObject({ type: "message:pinned", team, seq: first.seq, user: "ann" });
    let listed: number[] = [];
    const deadline = Date.now() + 20_000;
    // The list is what the worker synced: polled until it has.
    while (listed.length === 0 && Date.now() < deadline) {
      listed = (await ann.pins(team)).messages.map((m) => m.seq);
      if (listed.length === 0) await sleep(100);
    }
    expect(listed).toEqual([first.seq]);
  });

  it("reacts, tells the others, and history counts the reactions once synced", async () => {
    const team = `${stack.prefix}-reactions`;
    const ann = await member("ann", [team]);
    // A user of its own: the polling below spends its HTTP rate budget.
    const ben = await member("reaction-watcher", [team]);
    const seen: string[] = [];
    ben.on("reaction", (r) => seen.push(`${r.type} ${r.user} ${r.emoji}`));
    const first = await ann.send(team, "ship it?");
    expect((await ann.react(team, first.seq, "👍")).offset).toBeDefined();
    expect((await ann.react(team, first.seq, "👍")).offset).toBeUndefined();
    await ann.react(team, first.seq, "🎉");
    await ann.react(team, first.seq, "🎉", false);
    await expect(ann.react(team, first.seq, "two words")).rejects.toMatchObject({ code: "bad_request" });
    await until(() => seen.length === 3, "the reaction events");
    expect(seen).toEqual(["reaction:added ann 👍", "reaction:added ann 🎉", "reaction:removed ann 🎉"]);
    const expected = [{ emoji: "👍", count: 1, me: false }];
    const deadline = Date.now() + 20_000;
    let reactions: unknown = [];
    // Aggregates are what the worker synced: polled until all four events are.
    while (Date.now() < deadline) {
      reactions = (await ben.history(team)).messages[0]?.reactions;
      if (isDeepStrictEqual(reactions, expected)) break;
      await sleep(250);
    }
    expect(reactions).toEqual(expected);
  });

  it("loads unread counts and keeps them live", async () => {
    const team = `${stack.prefix}-unread`;
    const quiet = `${stack.prefix}-unread-quiet`;
    const ann = await member("ann", [team]);
    const ben = await member("unread-reader", [team, quiet]);
    expect(await ben.unread()).toEqual([
      { team, seq: 0, read: 0, unread: 0, mentions: 0 },
      { team: quiet, seq: 0, read: 0, unread: 0, mentions: 0 },
    ]);
    const changes: unknown[] = [];
    ben.on("unread", (u) => changes.push(u));
    await ann.send(team, "one");
    const two = await ann.send(team, "two, @reader", undefined, { mentions: ["unread-reader"] });
    await until(() => ben.unreadCounts(team)?.unread === 2, "two unread");
    expect(ben.unreadCounts(team)).toEqual({ team, seq: two.seq, read: 0, unread: 2, mentions: 1 });
    await ann.delete(team, two.seq);
    await until(() => ben.unreadCounts(team)?.unread === 1, "the deleted one gone");
    expect(ben.unreadCounts(team)?.mentions).toBe(0);
    ben.markRead(team, two.seq);
    expect(ben.unreadCounts(team)).toEqual({ team, seq: two.seq, read: two.seq, unread: 0, mentions: 0 });
    expect(changes.length).toBeGreaterThanOrEqual(4);
  });

  it("replies in a thread and reads it back", async () => {
    const team = `${stack.prefix}-thread`;
    const ann = await member("ann", [team]);
    const top = await ann.send(team, "release notes?");
    const reply = await ann.send(team, "here", undefined, { parent: top.seq });
    await expect(ann.send(team, "nested", undefined, { parent: reply.seq })).rejects.toMatchObject({ code: "bad_request" });
    let thread = await ann.replies(team, top.seq);
    // Served from the stream before the worker synced, from PostgreSQL after.
    expect(thread.messages.map((m) => [m.seq, m.parent])).toEqual([[reply.seq, top.seq]]);
    const page = await ann.history(team, { topLevel: true });
    expect(page.messages.map((m) => m.seq)).toEqual([top.seq]);
    thread = await ann.replies(team, top.seq, { after: reply.seq });
    expect(thread.messages).toEqual([]);
  });
});
