import { afterEach, describe, expect, it, vi } from "vitest";
import { TeamchatError } from "../../src/index.js";
import { FakeWebSocket, newClient, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

describe("heartbeat", () => {
  it("pings after heartbeat_ms of silence and gives up after twice that", async () => {
    vi.useFakeTimers();
    const client = newClient();
    const closes: unknown[] = [];
    client.on("close", (c) => closes.push(c));
    client.connect();
    await settle();
    FakeWebSocket.last.welcome("u1", 1_000);
    await vi.advanceTimersByTimeAsync(999);
    expect(FakeWebSocket.last.frames("ping")).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.last.frames("ping")).toEqual([{ type: "ping" }]);
    FakeWebSocket.last.receive({ type: "pong" }); // alive again
    await vi.advanceTimersByTimeAsync(1_500);
    expect(closes).toEqual([]);
    await vi.advanceTimersByTimeAsync(500);
    expect(closes).toEqual([{ code: 4000, reason: "no heartbeat" }]);
    expect(FakeWebSocket.last.closedWith?.code).toBe(4000);
    expect(client.state).toBe("reconnecting");
    client.close();
  });

  it("gives up on a connection that never welcomes", async () => {
    vi.useFakeTimers();
    const client = newClient();
    client.connect();
    await settle();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(client.state).toBe("reconnecting");
    client.close();
  });
});

describe("history", () => {
  it("GETs the page with the token and returns it", async () => {
    const page = { messages: [], has_more: false };
    const fetch = vi.fn(() => Promise.resolve(new Response(JSON.stringify(page), { status: 200 })));
    vi.stubGlobal("fetch", fetch);
    try {
      const client = newClient({ url: "wss://chat.example:8443/ws", token: "tok" });
      await expect(client.history("a:b", { before: 10, limit: 5 })).resolves.toEqual(page);
      expect(fetch).toHaveBeenCalledWith("https://chat.example:8443/v1/teams/a%3Ab/messages?before=10&limit=5", {
        headers: { Authorization: "Bearer tok" },
      });
    } finally {
      vi.unstubAllGlobals();
    }
  });

  it("throws the server's error code", async () => {
    vi.stubGlobal("fetch", () => Promise.resolve(new Response(JSON.stringify({ code: "forbidden", message: "no" }), { status: 403 })));
    try {
      const client = newClient({ httpUrl: "http://h/" });
      const error = await client.history("t").catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TeamchatError);
      expect(error).toMatchObject({ code: "forbidden", status: 403 });
    } finally {
      vi.unstubAllGlobals();
    }
  });
});
