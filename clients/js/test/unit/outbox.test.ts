import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeWebSocket, joinedClient, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

function ack(send: Record<string, unknown>, seq: number, offset: number): Record<string, unknown> {
  return { type: "message:ack", client_id: send.client_id, team: send.team, seq, id: `m${seq}`, offset: String(offset), ts: 1, rid: send.rid };
}

describe("outbox", () => {
  it("resolves a send with its ack", async () => {
    const client = await joinedClient();
    const sent = client.send("t1", "hello", { k: 1 });
    const frame = FakeWebSocket.last.lastFrame("message:send");
    expect(frame).toMatchObject({ team: "t1", body: "hello", meta: { k: 1 } });
    expect(frame.client_id).toMatch(/^[0-9a-f-]{36}$/);
    FakeWebSocket.last.receive(ack(frame, 1, 1));
    await expect(sent).resolves.toMatchObject({ seq: 1, client_id: frame.client_id });
    client.close();
  });

  it("resends with the same client_id after reconnect and rejoin, in order", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const first = client.send("t1", "one");
    const second = client.send("t1", "two");
    const ids = FakeWebSocket.last.frames("message:send").map((f) => f.client_id);
    FakeWebSocket.last.drop(1006);
    const third = client.send("t1", "three"); // made while disconnected
    await vi.advanceTimersByTimeAsync(500);
    const socket = FakeWebSocket.last;
    expect(FakeWebSocket.instances).toHaveLength(2);
    socket.welcome();
    expect(socket.frames("message:send")).toEqual([]); // not before the room is rejoined
    socket.answerJoin("t1", { recovered: true });
    const resent = socket.frames("message:send");
    expect(resent.map((f) => f.body)).toEqual(["one", "two", "three"]);
    expect(resent.slice(0, 2).map((f) => f.client_id)).toEqual(ids);
    resent.forEach((f, i) => socket.receive(ack(f, i + 1, i + 1)));
    await expect(Promise.all([first, second, third])).resolves.toHaveLength(3);
    client.close();
  });

  it("retries after rate_limited, honouring retry_after_ms", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const sent = client.send("t1", "hi");
    const frame = FakeWebSocket.last.lastFrame("message:send");
    FakeWebSocket.last.receive({ type: "error", code: "rate_limited", message: "slow down", retry_after_ms: 700, rid: frame.rid, team: "t1" });
    const later = client.send("t1", "later"); // held back behind the retry, to keep the order
    await vi.advanceTimersByTimeAsync(699);
    expect(FakeWebSocket.last.frames("message:send")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    const frames = FakeWebSocket.last.frames("message:send");
    expect(frames.map((f) => f.body)).toEqual(["hi", "hi", "later"]);
    expect(frames[1]!.client_id).toBe(frame.client_id);
    FakeWebSocket.last.receive(ack(frames[1]!, 1, 1));
    FakeWebSocket.last.receive(ack(frames[2]!, 2, 2));
    await expect(sent).resolves.toMatchObject({ seq: 1 });
    await expect(later).resolves.toMatchObject({ seq: 2 });
    client.close();
  });

  it("rejects on a definitive error", async () => {
    const client = await joinedClient();
    const sent = client.send("t1", "x".repeat(10));
    const frame = FakeWebSocket.last.lastFrame("message:send");
    FakeWebSocket.last.receive({ type: "error", code: "too_large", message: "body too large", rid: frame.rid, team: "t1" });
    await expect(sent).rejects.toMatchObject({ name: "TeamchatError", code: "too_large", team: "t1" });
    client.close();
  });

  it("fails an edit in flight when the connection drops, but not one made while down", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const inFlight = client.edit("t1", 1, "new");
    FakeWebSocket.last.drop(1006);
    await expect(inFlight).rejects.toMatchObject({ code: "disconnected" });
    const queued = client.delete("t1", 1);
    await vi.advanceTimersByTimeAsync(500);
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.answerJoin("t1", { recovered: true });
    const frame = FakeWebSocket.last.lastFrame("message:delete");
    FakeWebSocket.last.receive({ type: "message:ack", team: "t1", seq: 1, id: "m1", offset: "2", ts: 1, rid: frame.rid });
    await expect(queued).resolves.toMatchObject({ seq: 1, offset: "2" });
    client.close();
  });

  it("refuses requests for a team not joined", async () => {
    const client = await joinedClient();
    await expect(client.send("other", "x")).rejects.toMatchObject({ code: "not_joined" });
    client.close();
  });

  it("fails the team's sends when it is left", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    FakeWebSocket.last.drop(1006);
    const sent = client.send("t1", "x");
    const left = client.leave("t1");
    await expect(sent).rejects.toMatchObject({ code: "not_joined" });
    await left;
    await settle();
  });
});
