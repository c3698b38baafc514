// Choosing the transport: WebSocket connections that die before their welcome while the
// gateway answers HTTP make the client fall back to SSE; a gateway that is down does not;
// on the fallback, a WebSocket probe that is welcomed brings the client back to WebSocket.
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Transport } from "../../src/index.js";
import { FakeWebSocket, newClient, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

/** A gateway's HTTP side: `/healthz` up or down, and an SSE stream that welcomes. */
function fakeHttp(up: () => boolean): { fetch: typeof fetch; calls: string[] } {
  const calls: string[] = [];
  const fetchImpl = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    calls.push(new URL(url).pathname);
    if (!up()) return Promise.reject(new TypeError("fetch failed"));
    if (url.endsWith("/healthz")) return Promise.resolve(new Response("ok"));
    if (url.includes("/v1/events")) {
      const welcome = { type: "session:welcome", user: "u1", session: "h1", heartbeat_ms: 25_000, max_frame: 1_048_576 };
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          const encoder = new TextEncoder();
          controller.enqueue(encoder.encode(`event: session:welcome\ndata: ${JSON.stringify(welcome)}\n\n`));
          // As the gateway does, a comment every 15 s.
          const keepalive = setInterval(() => controller.enqueue(encoder.encode(": keep-alive\n\n")), 15_000);
          init?.signal?.addEventListener("abort", () => clearInterval(keepalive));
        },
      });
      return Promise.resolve(new Response(body, { headers: { "content-type": "text/event-stream" } }));
    }
    return Promise.resolve(new Response(null, { status: 204 }));
  };
  return { fetch: fetchImpl, calls };
}

async function flush(ms: number): Promise<void> {
  await vi.advanceTimersByTimeAsync(ms);
  await settle();
}

describe("transports", () => {
  it("falls back to SSE when WebSocket dies before its welcome, and upgrades again", async () => {
    vi.useFakeTimers();
    const http = fakeHttp(() => true);
    const client = newClient({ fetch: http.fetch, reconnect: { baseMs: 10, maxMs: 10 } });
    const moves: Transport[] = [];
    client.on("transport", (t) => moves.push(t));
    client.connect();
    await settle();
    for (let attempt = 0; attempt < 2; attempt++) {
      FakeWebSocket.last.drop(1006);
      await flush(50);
    }
    expect(moves).toEqual(["sse"]);
    expect(client.transport).toBe("sse");
    await flush(50);
    expect(client.state).toBe("open");
    expect(http.calls).toContain("/v1/events");
    const sockets = FakeWebSocket.instances.length;

    // A minute later a probe is welcomed: the client goes back to WebSocket.
    await flush(60_000);
    expect(FakeWebSocket.instances.length).toBe(sockets + 1);
    FakeWebSocket.last.welcome();
    await flush(50);
    expect(moves).toEqual(["sse", "websocket"]);
    expect(FakeWebSocket.instances.length).toBe(sockets + 2);
    FakeWebSocket.last.welcome();
    expect(client.state).toBe("open");
    expect(client.transport).toBe("websocket");
    client.close();
  });

  it("stays on WebSocket while the gateway is down", async () => {
    vi.useFakeTimers();
    const http = fakeHttp(() => false);
    const client = newClient({ fetch: http.fetch, reconnect: { baseMs: 10, maxMs: 10 } });
    client.connect();
    await settle();
    for (let attempt = 0; attempt < 4; attempt++) {
      FakeWebSocket.last.drop(1006);
      await flush(50);
    }
    expect(client.transport).toBe("websocket");
    expect(FakeWebSocket.instances.length).toBe(5);
    client.close();
  });

  it("a close of the gateway's own is no sign of a block", async () => {
    vi.useFakeTimers();
    const http = fakeHttp(() => true);
    const client = newClient({ fetch: http.fetch, reconnect: { baseMs: 10, maxMs: 10 } });
    client.connect();
    await settle();
    for (let attempt = 0; attempt < 3; attempt++) {
      FakeWebSocket.last.drop(1012, "gateway restarting");
      await flush(50);
    }
    expect(client.transport).toBe("websocket");
    expect(http.calls).toEqual([]);
    client.close();
  });
});
