import { afterEach, describe, expect, it, vi } from "vitest";
import type { ErrorFrame } from "../../src/index.js";
import { FakeWebSocket, joinedClient, newClient, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

describe("fatal closes", () => {
  it("does not reconnect after 4001, closes and reports", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const errors: ErrorFrame[] = [];
    const states: string[] = [];
    client.on("error", (e) => errors.push(e));
    client.on("state", (s) => states.push(s));
    const pending = client.send("t1", "hello");
    FakeWebSocket.last.drop(4001, "invalid token");
    await expect(pending).rejects.toMatchObject({ code: "unauthorized" });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.state).toBe("closed");
    expect(states).toEqual(["closed"]);
    expect(errors).toEqual([{ type: "error", code: "unauthorized", message: "invalid token", close: 4001 }]);
  });

  it("gets a new token and reconnects after 4003", async () => {
    vi.useFakeTimers();
    let n = 0;
    const client = newClient({ token: undefined, getToken: () => `token-${++n}` });
    client.connect();
    await settle();
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.drop(4003, "token expired");
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(new URL(FakeWebSocket.last.url).searchParams.get("token")).toBe("token-2");
    client.close();
  });

  it("gives up after 4003 when the token cannot be renewed", async () => {
    vi.useFakeTimers();
    const client = newClient();
    const errors: ErrorFrame[] = [];
    client.on("error", (e) => errors.push(e));
    client.connect();
    await settle();
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.drop(4003, "token expired");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.state).toBe("closed");
    expect(errors[0]).toMatchObject({ code: "token_expired", close: 4003 });
  });

  it("close() fails what waits and stops", async () => {
    vi.useFakeTimers();
    const client = await joinedClient();
    const closes: { code: number }[] = [];
    client.on("close", (c) => closes.push(c));
    const pending = client.send("t1", "x");
    client.close();
    await expect(pending).rejects.toMatchObject({ code: "closed" });
    expect(FakeWebSocket.last.closedWith).toEqual({ code: 1000, reason: "client closed" });
    expect(closes).toEqual([{ code: 1000, reason: "client closed" }]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});
