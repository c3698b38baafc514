import type { TeamUnread } from "./types.js";

/** What the book knows of a message above the read position it counted. */
interface Counted {
  mention: boolean;
}

interface TeamBook extends TeamUnread {
  /** Messages counted live since the last load, by seq. */
  counted: Map<number, Counted>;
  /** The newest seq the last load counted (messages up to it are in its numbers). */
  loadedSeq: number;
}

/**
 * Unread counts per team, loaded from `GET /v1/me/unread` and kept live from the events
 * the client sees: `message:new` and `mention` add, `message:deleted` and the user's own
 * receipts take away. What the events cannot tell (a message from before the load deleted,
 * a receipt that passes messages the load counted but the book never saw) asks for a
 * reload instead of guessing: each method returns whether the counts changed and whether
 * they need one.
 */
export class UnreadBook {
  private readonly teams = new Map<string, TeamBook>();

  load(counts: TeamUnread[]): void {
    this.teams.clear();
    for (const c of counts) this.teams.set(c.team, { ...c, counted: new Map(), loadedSeq: c.seq });
  }

  get(team: string): TeamUnread | undefined {
    const book = this.teams.get(team);
    return book && view(book);
  }

  all(): TeamUnread[] {
    return [...this.teams.values()].map(view);
  }

  /** A new message (`mentionsMe`: its `mentions` hold the user). */
  message(team: string, seq: number, mine: boolean, mentionsMe: boolean): Change {
    const book = this.teams.get(team);
    if (!book) return NONE;
    const newer = seq > book.seq;
    book.seq = Math.max(book.seq, seq);
    if (mine || seq <= book.read || seq <= book.loadedSeq || book.counted.has(seq)) return newer ? CHANGED : NONE;
    book.counted.set(seq, { mention: mentionsMe });
    book.unread += 1;
    if (mentionsMe) book.mentions += 1;
    return CHANGED;
  }

  /** A `mention`: it also reaches teams the client has not joined. */
  mention(team: string, seq: number): Change {
    const book = this.teams.get(team);
    if (!book || seq <= book.read || seq <= book.loadedSeq) return NONE;
    book.seq = Math.max(book.seq, seq);
    const counted = book.counted.get(seq);
    if (counted?.mention) return NONE;
    if (counted) counted.mention = true;
    else {
      book.counted.set(seq, { mention: true });
      book.unread += 1;
    }
    book.mentions += 1;
    return CHANGED;
  }

  deleted(team: string, seq: number): Change {
    const book = this.teams.get(team);
    if (!book || seq <= book.read) return NONE;
    const counted = book.counted.get(seq);
    if (!counted) return seq <= book.loadedSeq ? RELOAD : NONE;
    book.counted.delete(seq);
    book.unread -= 1;
    if (counted.mention) book.mentions -= 1;
    return CHANGED;
  }

  /** The user read the team up to `seq` (here or on another device). */
  read(team: string, seq: number): Change {
    const book = this.teams.get(team);
    if (!book || seq <= book.read) return NONE;
    const passedLoaded = book.read < book.loadedSeq;
    book.read = seq;
    if (seq >= book.seq) {
      book.unread = 0;
      book.mentions = 0;
      book.counted.clear();
      return CHANGED;
    }
    for (const [counted, what] of book.counted) {
      if (counted > seq) continue;
      book.counted.delete(counted);
      book.unread -= 1;
      if (what.mention) book.mentions -= 1;
    }
    // Messages the load counted (not seen here) may now be read: only the server knows.
    return passedLoaded ? RELOAD : CHANGED;
  }
}

export type Change = "none" | "changed" | "reload";
const NONE: Change = "none";
const CHANGED: Change = "changed";
const RELOAD: Change = "reload";

function view(book: TeamBook): TeamUnread {
  return { team: book.team, seq: book.seq, read: book.read, unread: book.unread, mentions: book.mentions };
}
