// What the server ends on its own: a membership (`room:left` with a reason, no rid) and a
// token (4001 "revoked"); and what the backend tells the user (`notify`).
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ErrorFrame, Notify } from "../../src/index.js";
import { FakeWebSocket, joinedClient, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

describe("server-ended", () => {
  it("forgets a team it was removed from and does not rejoin it after a reconnect", async () => {
    vi.useFakeTimers();
    const client = await joinedClient("t1");
    const left: { team: string; reason: string }[] = [];
    client.on("left", (l) => left.push(l));
    const pending = client.send("t1", "in flight");
    FakeWebSocket.last.receive({ type: "room:left", team: "t1", reason: "removed" });
    expect(left).toEqual([{ team: "t1", reason: "removed" }]);
    await expect(pending).rejects.toMatchObject({ code: "removed", team: "t1" });
    await expect(client.send("t1", "after")).rejects.toMatchObject({ code: "not_joined" });

    FakeWebSocket.last.drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    await settle();
    expect(FakeWebSocket.instances).toHaveLength(2);
    FakeWebSocket.last.welcome();
    expect(FakeWebSocket.last.frames("room:join")).toEqual([]);
    client.close();
  });

  it("a room:left answering our own leave is no removal", async () => {
    const client = await joinedClient("t1");
    const left: unknown[] = [];
    client.on("left", (l) => left.push(l));
    const leaving = client.leave("t1");
    const rid = FakeWebSocket.last.frames("room:leave")[0]!.rid;
    FakeWebSocket.last.receive({ type: "room:left", team: "t1", rid });
    await leaving;
    expect(left).toEqual([]);
    client.close();
  });

  it("emits notify", async () => {
    const client = await joinedClient("t1");
    const notes: Notify[] = [];
    client.on("notify", (n) => notes.push(n));
    FakeWebSocket.last.receive({ type: "notify", data: { unread: 2 } });
    expect(notes).toEqual([{ type: "notify", data: { unread: 2 } }]);
    client.close();
  });

  it("gives up on a revoked token even with getToken, without a reconnect loop", async () => {
    vi.useFakeTimers();
    const client = await joinedClient("t1", { getToken: () => "the same token" });
    const errors: ErrorFrame[] = [];
    client.on("error", (e) => errors.push(e));
    FakeWebSocket.last.drop(4001, "revoked");
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.state).toBe("closed");
    expect(errors).toEqual([{ type: "error", code: "revoked", message: "revoked", close: 4001 }]);
  });
});
