/** At most one `receipt:update` per team in this interval. */
export const RECEIPT_INTERVAL_MS = 1_000;

interface TeamReceipts {
  /** Highest seq sent (or known to the server). */
  sent: number;
  /** Highest seq asked for and not sent yet. */
  pending?: number;
  lastSentAt: number;
  timer?: ReturnType<typeof setTimeout>;
}

/**
 * Coalesces read receipts: the first goes out at once, later ones at most once a second
 * carrying the highest seq asked for; never a seq at or below one already sent. `send`
 * returns false when it could not go out; `resume` retries once the team is joined again.
 */
export class ReceiptCoalescer {
  private readonly teams = new Map<string, TeamReceipts>();

  constructor(private readonly send: (team: string, seq: number) => boolean) {}

  mark(team: string, seq: number): void {
    const state = this.state(team);
    if (seq <= Math.max(state.sent, state.pending ?? 0)) return;
    state.pending = seq;
    this.schedule(team, state);
  }

  /** The server already holds this seq for us (from `receipt:list`). */
  known(team: string, seq: number): void {
    const state = this.state(team);
    state.sent = Math.max(state.sent, seq);
    if (state.pending !== undefined && state.pending <= state.sent) state.pending = undefined;
  }

  resume(team: string): void {
    const state = this.teams.get(team);
    if (state) this.schedule(team, state);
  }

  forget(team?: string): void {
    for (const [key, state] of this.teams) {
      if (team !== undefined && key !== team) continue;
      clearTimeout(state.timer);
      this.teams.delete(key);
    }
  }

  private state(team: string): TeamReceipts {
    let state = this.teams.get(team);
    if (!state) this.teams.set(team, (state = { sent: 0, lastSentAt: -Infinity }));
    return state;
  }

  private schedule(team: string, state: TeamReceipts): void {
    if (state.timer !== undefined || state.pending === undefined) return;
    const wait = state.lastSentAt + RECEIPT_INTERVAL_MS - Date.now();
    if (wait > 0) {
      state.timer = setTimeout(() => {
        state.timer = undefined;
        this.flush(team, state);
      }, wait);
    } else {
      this.flush(team, state);
    }
  }

  private flush(team: string, state: TeamReceipts): void {
    const seq = state.pending;
    if (seq === undefined || !this.send(team, seq)) return;
    state.sent = seq;
    state.pending = undefined;
    state.lastSentAt = Date.now();
  }
}
