/** `typing:start` is repeated at most this often while the user keeps typing. */
export const TYPING_REPEAT_MS = 5_000;
/** `typing:stop` goes out after this long without a keystroke. */
export const TYPING_IDLE_MS = 3_000;

/**
 * Turns keystrokes into `typing:start` / `typing:stop`. `send` returns false when the
 * frame could not go out (not connected), so the next keystroke tries again.
 */
export class TypingNotifier {
  private readonly teams = new Map<string, { startedAt: number; idle: ReturnType<typeof setTimeout> }>();

  constructor(private readonly send: (type: "typing:start" | "typing:stop", team: string) => boolean) {}

  keystroke(team: string): void {
    const now = Date.now();
    const current = this.teams.get(team);
    let startedAt = current?.startedAt;
    if (startedAt === undefined || now - startedAt >= TYPING_REPEAT_MS) {
      if (!this.send("typing:start", team)) return;
      startedAt = now;
    }
    clearTimeout(current?.idle);
    this.teams.set(team, { startedAt, idle: setTimeout(() => this.stop(team), TYPING_IDLE_MS) });
  }

  stop(team: string): void {
    const current = this.teams.get(team);
    if (!current) return;
    clearTimeout(current.idle);
    this.teams.delete(team);
    this.send("typing:stop", team);
  }

  /** Forgets the state without sending (the server stops a closed connection's typing). */
  forget(team?: string): void {
    for (const [key, current] of this.teams) {
      if (team !== undefined && key !== team) continue;
      clearTimeout(current.idle);
      this.teams.delete(key);
    }
  }
}
