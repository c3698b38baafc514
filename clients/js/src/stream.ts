import type { ResetReason, RoomJoined, Since } from "./types.js";

/**
 * Where the client is in one team's event stream, across connections: the epoch and the
 * offset up to which every event was seen (or was our own), which is the `since` of the
 * next rejoin, and what dedupes events.
 *
 * A connection gets every durable event of the team in offset order, except its own, for
 * which it gets acks. An ack's offset can arrive before earlier events of others, so acked
 * offsets are kept aside and only fill the gap once everything below them was seen. A
 * replayed event at an acked offset is our own earlier message, edit or delete (the new
 * connection did not send it): dropped, never emitted twice.
 */
export class TeamStream {
  private epoch: string | undefined;
  private last: bigint | undefined;
  /** Acked offsets above `last`. */
  private readonly own = new Set<bigint>();

  /** The position to resume from, once joined. */
  since(): Since | undefined {
    return this.epoch === undefined || this.last === undefined
      ? undefined
      : { offset: this.last.toString(), epoch: this.epoch };
  }

  /** The epoch of the current join, if any. */
  currentEpoch(): string | undefined {
    return this.epoch;
  }

  /**
   * Takes a `room:joined`. Returns why the events cannot be continued, if we asked to
   * resume and the server could not: the app must reload the team.
   */
  joined(frame: RoomJoined): ResetReason | undefined {
    if (frame.recovered === true && frame.epoch === this.epoch) return undefined;
    const asked = this.since();
    this.epoch = frame.epoch;
    this.last = BigInt(frame.offset);
    this.own.clear();
    if (!asked) return undefined;
    return asked.epoch === frame.epoch ? "not_recovered" : "stream_lost";
  }

  /** Takes an event's offset; false when it must not be emitted (seen, or our own). */
  accept(offset: string): boolean {
    if (this.last === undefined) return false;
    const at = BigInt(offset);
    if (at <= this.last) return false;
    const mine = this.own.delete(at);
    this.last = at;
    this.advance();
    return !mine;
  }

  /** Records the offset of one of our acked events. */
  acked(offset: string): void {
    if (this.last === undefined) return;
    const at = BigInt(offset);
    if (at <= this.last) return;
    this.own.add(at);
    this.advance();
  }

  private advance(): void {
    let last = this.last!;
    while (this.own.delete(last + 1n)) last++;
    for (const at of this.own) if (at <= last) this.own.delete(at);
    this.last = last;
  }
}
