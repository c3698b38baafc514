import { afterEach, describe, expect, it, vi } from "vitest";
import type { MessageNew } from "../../src/index.js";
import { FakeWebSocket, joinedClient, message, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

/** Drops the connection and lets the client reconnect at once (zero jitter). */
async function reconnect(): Promise<FakeWebSocket> {
  vi.spyOn(Math, "random").mockReturnValue(0);
  FakeWebSocket.last.drop(1006);
  await vi.advanceTimersByTimeAsync(1);
  await settle();
  FakeWebSocket.last.welcome();
  return FakeWebSocket.last;
}

describe("resuming a team", () => {
  it("rejoins with since = the last event's offset and epoch, not an ack's", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    FakeWebSocket.last.receive(message("t1", 1));
    const sent = client.send("t1", "mine");
    const frame = FakeWebSocket.last.lastFrame("message:send");
    // Our message got offset 3; the event at 2 (someone else's) has not arrived yet.
    FakeWebSocket.last.receive({ type: "message:ack", client_id: frame.client_id, team: "t1", seq: 3, id: "m3", offset: "3", ts: 1, rid: frame.rid });
    await sent;
    expect(client.lastOffset("t1")).toEqual({ offset: "1", epoch: "e1" });
    FakeWebSocket.last.receive(message("t1", 2));
    expect(client.lastOffset("t1")).toEqual({ offset: "3", epoch: "e1" });
    const socket = await reconnect();
    expect(socket.lastFrame("room:join")).toMatchObject({ team: "t1", since: { offset: "3", epoch: "e1" } });
    client.close();
  });

  it("never emits an offset twice, nor our own acked message replayed", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const seen: MessageNew[] = [];
    client.on("message", (m) => seen.push(m));
    FakeWebSocket.last.receive(message("t1", 1));
    const sent = client.send("t1", "mine");
    const frame = FakeWebSocket.last.lastFrame("message:send");
    FakeWebSocket.last.receive({ type: "message:ack", client_id: frame.client_id, team: "t1", seq: 3, id: "m3", offset: "3", ts: 1, rid: frame.rid });
    await sent;
    const socket = await reconnect();
    // A replay that (against the contract) repeats offset 1, then 2, our own 3, and 4.
    socket.answerJoin("t1", { recovered: true, offset: "4" }, [
      message("t1", 1),
      message("t1", 2),
      message("t1", 3, { client_id: frame.client_id, user: "u1", body: "mine" }),
      message("t1", 4),
    ]);
    FakeWebSocket.last.receive(message("t1", 4));
    expect(seen.map((m) => m.offset)).toEqual(["1", "2", "4"]);
    client.close();
  });

  it("settles a send whose ack was lost from its replayed message:new", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const seen: MessageNew[] = [];
    client.on("message", (m) => seen.push(m));
    const sent = client.send("t1", "mine");
    const frame = FakeWebSocket.last.lastFrame("message:send");
    const socket = await reconnect();
    socket.answerJoin("t1", { recovered: true, offset: "1" }, [
      message("t1", 1, { client_id: frame.client_id, user: "u1", body: "mine" }),
    ]);
    await expect(sent).resolves.toMatchObject({ type: "message:ack", client_id: frame.client_id, seq: 1, offset: "1" });
    expect(seen).toEqual([]);
    expect(socket.frames("message:send")).toEqual([]); // no needless resend
    client.close();
  });

  it("emits reset when the rejoin is not recovered, and starts from the new position", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const resets: unknown[] = [];
    const seen: string[] = [];
    client.on("reset", (r) => resets.push(r));
    client.on("message", (m) => seen.push(m.offset));
    FakeWebSocket.last.receive(message("t1", 5));
    let socket = await reconnect();
    socket.answerJoin("t1", { recovered: false, epoch: "e1", offset: "900" });
    expect(resets).toEqual([{ team: "t1", reason: "not_recovered" }]);
    socket = await reconnect();
    expect(socket.lastFrame("room:join").since).toEqual({ offset: "900", epoch: "e1" });
    // The stream was lost: a new epoch whose offsets start again below ours.
    socket.answerJoin("t1", { recovered: false, epoch: "e2", offset: "0" });
    expect(resets).toEqual([
      { team: "t1", reason: "not_recovered" },
      { team: "t1", reason: "stream_lost" },
    ]);
    socket.receive(message("t1", 1));
    expect(seen).toEqual(["5", "1"]);
    client.close();
  });

  it("emits edits, deletes and receipts of others once", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const seen: string[] = [];
    client.on("edit", (e) => seen.push(`edit ${e.offset}`));
    client.on("delete", (e) => seen.push(`delete ${e.offset}`));
    client.on("receipt", (e) => seen.push(`receipt ${e.seq}`));
    const edit = { type: "message:edited", team: "t1", seq: 1, body: "b", user: "u2", ts: 1, offset: "1" };
    const del = { type: "message:deleted", team: "t1", seq: 1, user: "u2", ts: 1, offset: "2" };
    const receipt = { type: "receipt:update", team: "t1", user: "u2", seq: 1, offset: "3" };
    FakeWebSocket.last.receive(edit);
    FakeWebSocket.last.receive(del);
    FakeWebSocket.last.receive(receipt);
    const socket = await reconnect();
    socket.answerJoin("t1", { recovered: true, offset: "3" }, [edit, del, receipt]);
    expect(seen).toEqual(["edit 1", "delete 2", "receipt 1"]);
    client.close();
  });

  it("resolves join only once the join's answer is complete, with presence known", async () => {
    const client = await joinedClient("t0");
    const join = client.join("t1");
    let resolved = false;
    void join.then(() => (resolved = true));
    const rid = FakeWebSocket.last.lastFrame("room:join").rid;
    FakeWebSocket.last.receive({ type: "room:joined", team: "t1", epoch: "e", offset: "0", seq: 0, rid });
    FakeWebSocket.last.receive({ type: "presence:list", team: "t1", users: [{ user: "u2", name: "Bo", since: 5 }] });
    await Promise.resolve();
    expect(resolved).toBe(false);
    FakeWebSocket.last.receive({ type: "receipt:list", team: "t1", receipts: [] });
    await expect(join).resolves.toMatchObject({ type: "room:joined", team: "t1" });
    expect(client.presence("t1")).toEqual(new Map([["u2", { name: "Bo", since: 5 }]]));
    client.close();
  });

  it("rejects a join the server refuses", async () => {
    const client = await joinedClient("t0");
    const join = client.join("secret");
    const rid = FakeWebSocket.last.lastFrame("room:join").rid;
    FakeWebSocket.last.receive({ type: "room:error", code: "forbidden", message: "team not in token", team: "secret", rid });
    await expect(join).rejects.toMatchObject({ code: "forbidden" });
    client.close();
  });
});

describe("presence", () => {
  it("keeps the online users of a team up to date", async () => {
    const client = await joinedClient();
    const seen: Map<string, unknown>[] = [];
    client.on("presence", (p) => seen.push(p.users));
    FakeWebSocket.last.receive({ type: "presence:list", team: "t1", users: [{ user: "u1", name: "Al", since: 1 }] });
    FakeWebSocket.last.receive({ type: "presence:update", team: "t1", user: "u2", status: "online" });
    FakeWebSocket.last.receive({ type: "presence:update", team: "t1", user: "u1", status: "offline" });
    expect(seen.map((m) => [...m.keys()])).toEqual([["u1"], ["u1", "u2"], ["u2"]]);
    expect(client.presence("t1")).toEqual(new Map([["u2", {}]]));
    client.close();
  });
});
