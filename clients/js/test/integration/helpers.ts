import WebSocket from "ws";
import { TeamchatClient, type ClientOptions } from "../../src/index.js";
import type { Gateway, Stack } from "../support/stack.js";

/** A client of `gateway` for `user`, in Node (the `ws` package), reconnecting quickly. */
export function clientFor(stack: Stack, gateway: Gateway, user: string, teams: string[], options: Partial<ClientOptions> = {}): TeamchatClient {
  return new TeamchatClient({
    url: gateway.wsUrl,
    token: stack.token(user, teams, 3600, user.toUpperCase()),
    WebSocket,
    reconnect: { baseMs: 50, maxMs: 500 },
    ...options,
  });
}

/** Resolves once `check` holds; polls, failing after `timeoutMs`. */
export async function until(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
