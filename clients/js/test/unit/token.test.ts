import { afterEach, describe, expect, it, vi } from "vitest";
import { decodeJwtPayload, refreshDelayMs } from "../../src/token.js";
import { FakeWebSocket, newClient, resetFakes, settle } from "./fake-websocket.js";

afterEach(resetFakes);

function jwt(claims: object): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part(claims)}.sig`;
}

describe("token timing", () => {
  it("decodes the payload", () => {
    expect(decodeJwtPayload(jwt({ sub: "ü", exp: 5 }))).toEqual({ sub: "ü", exp: 5 });
    expect(decodeJwtPayload("garbage")).toBeUndefined();
  });

  it("refreshes 60 s before exp for long tokens", () => {
    const now = 1_000_000_000_000;
    const token = jwt({ iat: now / 1000, exp: now / 1000 + 3600 });
    expect(refreshDelayMs(token, now, now)).toBe(3_540_000);
  });

  it("refreshes at 80% of the lifetime for short tokens", () => {
    const now = 1_000_000_000_000;
    expect(refreshDelayMs(jwt({ exp: now / 1000 + 100 }), now, now)).toBe(80_000);
    expect(refreshDelayMs(jwt({ sub: "x" }), now, now)).toBeUndefined();
  });

  it("sends token:refresh with a new token before exp, and again after token:refreshed", async () => {
    vi.useFakeTimers();
    const tokens: string[] = [];
    const client = newClient({
      token: undefined,
      getToken: () => {
        const token = jwt({ n: tokens.length, exp: Math.floor(Date.now() / 1000) + 120 });
        tokens.push(token);
        return token;
      },
    });
    client.connect();
    await settle();
    const socket = FakeWebSocket.last;
    socket.welcome("u1", 1_000_000); // no heartbeat in the way
    await vi.advanceTimersByTimeAsync(95_000);
    expect(socket.frames("token:refresh")).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_000); // 80% of 120 s
    const refresh = socket.lastFrame("token:refresh");
    expect(refresh.token).toBe(tokens[1]);
    socket.receive({ type: "token:refreshed", exp: 0, rid: refresh.rid });
    await vi.advanceTimersByTimeAsync(96_000);
    expect(socket.frames("token:refresh").map((f) => f.token)).toEqual([tokens[1], tokens[2]]);
    client.close();
  });
});
