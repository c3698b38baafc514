import type { ErrorFrame } from "./types.js";

/**
 * Why a request failed. `code` is a protocol error code (`forbidden`, `too_large`, …) or one
 * of the client's own: `closed` (client.close()), `not_joined` (the team was never joined or
 * was left), `disconnected` (an edit or delete was in flight when the connection dropped:
 * its outcome is unknown), `unauthorized` / `revoked` / `token_expired` (fatal close),
 * `removed` (the server took the user out of the team), `http` (history answered without an
 * error body).
 */
export class TeamchatError extends Error {
  readonly code: string;
  readonly team?: string;
  readonly retryAfterMs?: number;
  /** HTTP status, for history errors. */
  readonly status?: number;

  constructor(code: string, message: string, extra: { team?: string; retryAfterMs?: number; status?: number } = {}) {
    super(message);
    this.name = "TeamchatError";
    this.code = code;
    this.team = extra.team;
    this.retryAfterMs = extra.retryAfterMs;
    this.status = extra.status;
  }

  static fromFrame(frame: ErrorFrame): TeamchatError {
    return new TeamchatError(frame.code, frame.message, { team: frame.team, retryAfterMs: frame.retry_after_ms });
  }
}

/** Errors after which the same request may succeed later; it changed nothing. */
export function isRetryable(code: string): boolean {
  return code === "unavailable" || code === "rate_limited";
}
