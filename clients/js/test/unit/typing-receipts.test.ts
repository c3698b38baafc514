import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeWebSocket, joinedClient, resetFakes } from "./fake-websocket.js";

afterEach(resetFakes);

const types = () => FakeWebSocket.last.frames().map((f) => f.type);

describe("typing", () => {
  it("sends typing:start at most every 5 s and typing:stop after 3 s idle", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const at: [number, unknown][] = [];
    const start = Date.now();
    const seen = () => FakeWebSocket.last.frames().filter((f) => String(f.type).startsWith("typing:"));
    // A keystroke every 400 ms for 12 s.
    for (let t = 0; t < 12_000; t += 400) {
      const before = seen().length;
      client.typing("t1");
      if (seen().length > before) at.push([Date.now() - start, seen().at(-1)!.type]);
      await vi.advanceTimersByTimeAsync(400);
    }
    expect(at).toEqual([
      [0, "typing:start"],
      [5_200, "typing:start"],
      [10_400, "typing:start"],
    ]);
    await vi.advanceTimersByTimeAsync(2_500);
    expect(seen().at(-1)!.type).toBe("typing:start");
    await vi.advanceTimersByTimeAsync(200);
    expect(seen().at(-1)).toEqual({ type: "typing:stop", team: "t1" });
    client.close();
  });

  it("sends typing:stop before the message", async () => {
    const client = await joinedClient();
    client.typing("t1");
    client.send("t1", "hi").catch(() => {}); // fails at close()
    expect(types().slice(-3)).toEqual(["typing:start", "typing:stop", "message:send"]);
    client.close();
  });

  it("emits others' typing", async () => {
    const client = await joinedClient();
    const seen: unknown[] = [];
    client.on("typing", (t) => seen.push(t));
    FakeWebSocket.last.receive({ type: "typing:start", team: "t1", user: "u2" });
    FakeWebSocket.last.receive({ type: "typing:stop", team: "t1", user: "u2" });
    expect(seen).toEqual([
      { team: "t1", user: "u2", typing: true },
      { team: "t1", user: "u2", typing: false },
    ]);
    client.close();
  });
});

describe("receipts", () => {
  const receipts = () => FakeWebSocket.last.frames("receipt:update").map((f) => f.seq);

  it("sends the first at once, then at most one a second with the highest seq", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    client.markRead("t1", 3);
    client.markRead("t1", 4);
    client.markRead("t1", 7);
    client.markRead("t1", 5);
    expect(receipts()).toEqual([3]);
    await vi.advanceTimersByTimeAsync(999);
    expect(receipts()).toEqual([3]);
    await vi.advanceTimersByTimeAsync(1);
    expect(receipts()).toEqual([3, 7]);
    client.markRead("t1", 7);
    client.markRead("t1", 6);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(receipts()).toEqual([3, 7]);
    client.markRead("t1", 8);
    expect(receipts()).toEqual([3, 7, 8]);
    client.close();
  });

  it("keeps teams apart and never goes below what the server has", async () => {
    vi.useFakeTimers();
    const client = await joinedClient("t1");
    const join = client.join("t2");
    FakeWebSocket.last.receive({ type: "room:joined", team: "t2", epoch: "e", offset: "0", seq: 9, rid: FakeWebSocket.last.lastFrame("room:join").rid });
    FakeWebSocket.last.receive({ type: "presence:list", team: "t2", users: [] });
    FakeWebSocket.last.receive({ type: "receipt:list", team: "t2", receipts: [{ user: "u1", seq: 6 }] });
    await join;
    client.markRead("t1", 2);
    client.markRead("t2", 5);
    client.markRead("t2", 9);
    expect(FakeWebSocket.last.frames("receipt:update")).toEqual([
      { type: "receipt:update", team: "t1", seq: 2 },
      { type: "receipt:update", team: "t2", seq: 9 },
    ]);
    client.close();
  });

  it("sends a receipt asked for while disconnected after the rejoin", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    FakeWebSocket.last.drop(1006);
    client.markRead("t1", 4);
    await vi.advanceTimersByTimeAsync(500);
    FakeWebSocket.last.welcome();
    expect(receipts()).toEqual([]);
    FakeWebSocket.last.answerJoin("t1", { recovered: true });
    expect(receipts()).toEqual([4]);
    client.close();
  });
});
