import { TeamchatError, isRetryable } from "./errors.js";
import type { ClientFrame, ErrorFrame, MessageAck, MessageNew } from "./types.js";

/** How the outbox reaches the server. */
export interface OutboxTransport {
  /** Whether requests for the team can go out now (connected, room joined). */
  ready(team: string): boolean;
  /** Sends a frame, with a fresh `rid` already set. */
  transmit(frame: ClientFrame): void;
  nextRid(): string;
  /** The team's current epoch: an ack's offset only counts in the epoch it was sent in. */
  epoch(team: string): string | undefined;
}

interface Entry {
  team: string;
  /** The request without `rid`. */
  frame: ClientFrame;
  /** Sends are resent after a reconnect; an edit or delete in flight then fails. */
  resend: boolean;
  resolve(ack: MessageAck): void;
  reject(error: TeamchatError): void;
  /** Set while in flight on the current connection. */
  rid?: string;
  /** Set while waiting to retry after `unavailable` / `rate_limited`. */
  retry?: ReturnType<typeof setTimeout>;
  /** The team's epoch when the request first went out. */
  epoch?: string;
}

/** Delay before retrying `unavailable`, which carries no `retry_after_ms`. */
const UNAVAILABLE_RETRY_MS = 1_000;

/**
 * Requests that wait for a `message:ack`: `message:send` (idempotent by `client_id`, so
 * kept until acked and resent after reconnects), `message:edit` and `message:delete`.
 * Per team they go out in the order they were made.
 */
export class Outbox {
  private entries: Entry[] = [];

  constructor(private readonly transport: OutboxTransport) {}

  push(team: string, frame: ClientFrame, resend: boolean): Promise<MessageAck> {
    return new Promise((resolve, reject) => {
      this.entries.push({ team, frame, resend, resolve, reject });
      this.flush(team);
    });
  }

  /** Sends the team's waiting requests, in order, as far as the transport is ready. */
  flush(team: string): void {
    for (const entry of this.entries) {
      if (entry.team !== team || entry.rid !== undefined) continue;
      // A request waiting to be retried holds back the later ones, to keep their order.
      if (entry.retry !== undefined || !this.transport.ready(team)) return;
      entry.rid = this.transport.nextRid();
      entry.epoch ??= this.transport.epoch(team);
      this.transport.transmit({ ...entry.frame, rid: entry.rid });
    }
  }

  /**
   * Settles the request the ack answers. Returns its team and first epoch, or undefined if
   * it answers none.
   */
  ack(frame: MessageAck): { team: string; epoch?: string } | undefined {
    const entry = this.entries.find((e) => e.rid !== undefined && e.rid === frame.rid);
    if (!entry) return undefined;
    this.remove(entry);
    entry.resolve(frame);
    return { team: entry.team, epoch: entry.epoch };
  }

  /** Settles a send whose ack was lost, from its replayed `message:new`. */
  replayed(message: MessageNew): boolean {
    const entry = this.entries.find(
      (e) => e.team === message.team && e.frame.type === "message:send" && e.frame.client_id === message.client_id,
    );
    if (!entry) return false;
    this.remove(entry);
    const { team, seq, id, offset, ts, client_id } = message;
    entry.resolve({ type: "message:ack", client_id, team, seq, id, offset, ts });
    return true;
  }

  /** Handles an error answering one of our requests; false if it answers none. */
  error(frame: ErrorFrame): boolean {
    const entry = this.entries.find((e) => e.rid !== undefined && e.rid === frame.rid);
    if (!entry) return false;
    entry.rid = undefined;
    if (frame.code === "not_joined") {
      // The room is being rejoined: the request goes out again once it is.
      return true;
    }
    if (isRetryable(frame.code)) {
      entry.retry = setTimeout(() => {
        entry.retry = undefined;
        this.flush(entry.team);
      }, frame.retry_after_ms ?? UNAVAILABLE_RETRY_MS);
      return true;
    }
    this.remove(entry);
    entry.reject(TeamchatError.fromFrame(frame));
    return true;
  }

  /** The connection dropped: sends go out again later; edits and deletes in flight fail. */
  disconnected(): void {
    for (const entry of [...this.entries]) {
      if (entry.rid === undefined) continue;
      entry.rid = undefined;
      if (!entry.resend) {
        this.remove(entry);
        entry.reject(new TeamchatError("disconnected", "connection lost before the ack; the outcome is unknown", { team: entry.team }));
      }
    }
  }

  /** Fails every request of the team (or all). */
  fail(error: TeamchatError, team?: string): void {
    for (const entry of [...this.entries]) {
      if (team !== undefined && entry.team !== team) continue;
      this.remove(entry);
      entry.reject(error);
    }
  }

  private remove(entry: Entry): void {
    clearTimeout(entry.retry);
    this.entries = this.entries.filter((e) => e !== entry);
  }
}
