/** Reconnect delays after a close 4029 (too many connections) or 1013 (too slow) start here. */
export const LONG_BACKOFF_MIN_MS = 5_000;

/**
 * Exponential backoff with full jitter: the n-th delay is random(0, min(max, base·2^n)),
 * so that clients dropped together do not come back together. The "long" delays add
 * LONG_BACKOFF_MIN_MS in front, for closes where coming back soon would only be refused.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly baseMs: number,
    private readonly maxMs: number,
    private readonly random: () => number = () => Math.random(),
  ) {}

  next(long = false): number {
    const cap = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    const delay = this.random() * cap;
    return long ? LONG_BACKOFF_MIN_MS + delay : delay;
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** What a close code calls for. */
export type CloseAction = "fatal" | "new-token" | "long" | "retry";

export function closeAction(code: number): CloseAction {
  switch (code) {
    case 4001: // missing, invalid or revoked token: the same token will not do better
      return "fatal";
    case 4003: // token expired
      return "new-token";
    case 4029: // too many connections
    case 1013: // too slow to read
    case 1008: // protocol violations: a bug, do not hammer the gateway with it
      return "long";
    default: // 1006 dropped, 1012 draining or stream lost, 4000 heartbeat, 1011, …
      return "retry";
  }
}
