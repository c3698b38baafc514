import { afterEach, describe, expect, it, vi } from "vitest";
import { Backoff, LONG_BACKOFF_MIN_MS } from "../../src/backoff.js";
import { FakeWebSocket, newClient, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

describe("Backoff", () => {
  it("draws each delay from [0, min(max, base·2^n)] (full jitter)", () => {
    const backoff = new Backoff(500, 30_000);
    const caps = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000];
    for (const cap of caps) {
      const delay = backoff.next();
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(cap);
    }
  });

  it("reaches both ends of the range", () => {
    const low = new Backoff(500, 30_000, () => 0);
    expect(low.next()).toBe(0);
    const high = new Backoff(500, 30_000, () => 0.999999);
    high.next();
    high.next();
    expect(high.next()).toBeCloseTo(2000, 0);
  });

  it("starts over after reset", () => {
    const backoff = new Backoff(100, 10_000, () => 1);
    for (let i = 0; i < 5; i++) backoff.next();
    backoff.reset();
    expect(backoff.next()).toBe(100);
  });

  it("makes long delays start at 5 s", () => {
    const backoff = new Backoff(500, 30_000, () => 0);
    expect(backoff.next(true)).toBe(LONG_BACKOFF_MIN_MS);
    const random = new Backoff(500, 30_000);
    for (let i = 0; i < 20; i++) expect(random.next(true)).toBeGreaterThanOrEqual(5_000);
  });
});

describe("reconnecting", () => {
  it("reconnects after a drop within the first backoff window", async () => {
    vi.useFakeTimers();
    const client = newClient({ reconnect: { baseMs: 1_000, maxMs: 10_000 } });
    client.connect();
    await settle();
    FakeWebSocket.last.welcome();
    expect(client.state).toBe("open");
    FakeWebSocket.last.drop(1006);
    expect(client.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    client.close();
  });

  it("waits at least 5 s after 4029 and 1013", async () => {
    vi.useFakeTimers();
    vi.spyOn(Math, "random").mockReturnValue(0);
    for (const code of [4029, 1013]) {
      FakeWebSocket.instances = [];
      const client = newClient();
      client.connect();
      await settle();
      FakeWebSocket.last.welcome();
      FakeWebSocket.last.drop(code);
      await vi.advanceTimersByTimeAsync(4_999);
      expect(FakeWebSocket.instances).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(1);
      expect(FakeWebSocket.instances).toHaveLength(2);
      client.close();
    }
  });

  it("rotates through urls", async () => {
    vi.useFakeTimers();
    const client = newClient({ url: undefined, urls: ["ws://a/ws", "ws://b/ws"], reconnect: { baseMs: 10, maxMs: 10 } });
    client.connect();
    await settle();
    FakeWebSocket.last.drop(1006);
    await vi.advanceTimersByTimeAsync(10);
    FakeWebSocket.last.drop(1006);
    await vi.advanceTimersByTimeAsync(10);
    expect(FakeWebSocket.instances.map((s) => new URL(s.url).host)).toEqual(["a", "b", "a"]);
    client.close();
  });

  it("resets the backoff once a connection stayed open", async () => {
    vi.useFakeTimers();
    vi.spyOn(Math, "random").mockReturnValue(0.999);
    const client = newClient({ reconnect: { baseMs: 1_000, maxMs: 60_000 } });
    client.connect();
    await settle();
    for (let i = 0; i < 4; i++) {
      FakeWebSocket.last.drop(1006); // never welcomed: the delays grow
      await vi.advanceTimersByTimeAsync(60_000);
    }
    FakeWebSocket.last.welcome();
    await vi.advanceTimersByTimeAsync(5_000);
    FakeWebSocket.last.drop(1006);
    const before = FakeWebSocket.instances.length;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(FakeWebSocket.instances.length).toBe(before + 1);
    client.close();
  });
});
