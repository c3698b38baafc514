import { Backoff, closeAction } from "./backoff.js";
import { loadCodec, type Codec } from "./codec.js";
import { Emitter } from "./emitter.js";
import { TeamchatError, isRetryable } from "./errors.js";
import { fetchHistory, fetchPins, fetchUnread, httpBaseOf } from "./history.js";
import { Outbox } from "./outbox.js";
import { PresenceBook } from "./presence.js";
import { ReceiptCoalescer } from "./receipts.js";
import { HttpLink } from "./http-link.js";
import { Connection, type Link } from "./socket.js";
import { TeamStream } from "./stream.js";
import { isExpired, refreshDelayMs } from "./token.js";
import { TypingNotifier } from "./typing.js";
import { UnreadBook, type Change } from "./unread.js";
import type {
  ClientEvents,
  ClientFrame,
  ClientOptions,
  ClientState,
  ErrorFrame,
  HistoryPage,
  HistoryQuery,
  MessageAck,
  Meta,
  PresenceInfo,
  RoomJoined,
  SendOptions,
  TeamUnread,
  ServerFrame,
  Since,
  Transport,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/** A connection open this long counts as stable: the backoff starts over. */
const STABLE_AFTER_MS = 5_000;
/** Retry of a failed token refresh (the connection lives on until `exp`). */
const TOKEN_RETRY_MS = 10_000;
/** Retry of a join refused with `unavailable`. */
const JOIN_RETRY_MS = 1_000;
/** Connections in a row that end before their welcome before the next transport is tried. */
const FAILURES_BEFORE_FALLBACK = 2;
/** Closes before the welcome that a middlebox breaking the transport gives: dropped (1006),
 *  mangled (1002), never answered (4000, the client's connect timeout). */
const BLOCKED_LIKE = [1006, 1002, 4000];
/** While on a fallback, how often WebSocket is tried again in the background. */
const UPGRADE_PROBE_MS = 60_000;

interface Room {
  stream: TeamStream;
  /** pending: to be joined on the next open connection; joining: join sent; ready: joined. */
  status: "pending" | "joining" | "ready";
  joinRid?: string;
  /** The `room:joined` of the current join, once it arrived. */
  joined?: RoomJoined;
  waiters: { resolve(joined: RoomJoined): void; reject(error: TeamchatError): void }[];
  retry?: ReturnType<typeof setTimeout>;
}

/**
 * A teamchat client: one connection to a gateway, kept up across drops, with the rooms it
 * joined resumed where they left off. See README.md.
 */
export class TeamchatClient {
  private readonly events = new Emitter<ClientEvents>();
  private readonly urls: string[];
  private readonly httpBase: string;
  private readonly WebSocketImpl: WebSocketConstructor | undefined;
  private readonly backoff: Backoff;
  private readonly rooms = new Map<string, Room>();
  private readonly leaves = new Map<string, () => void>();
  private readonly outbox: Outbox;
  private readonly typingNotifier: TypingNotifier;
  private readonly receipts: ReceiptCoalescer;
  private readonly presenceBook = new PresenceBook();
  private readonly unreadBook = new UnreadBook();

  private currentState: ClientState = "idle";
  private connection: Link | undefined;
  private readonly transports: Transport[];
  private transportIndex = 0;
  /** Connections in a row on the current transport that ended before their welcome. */
  private unwelcomed = 0;
  private welcomed = false;
  /** Bumped by every connect attempt and close(): async steps of an older one stop. */
  private generation = 0;
  private urlIndex = 0;
  private ridCounter = 0;
  private token: string | undefined;
  private tokenAt = 0;
  private refreshRid: string | undefined;
  private timers: {
    reconnect?: ReturnType<typeof setTimeout>;
    stable?: ReturnType<typeof setTimeout>;
    refresh?: ReturnType<typeof setTimeout>;
    upgrade?: ReturnType<typeof setTimeout>;
    unread?: ReturnType<typeof setTimeout>;
  } = {};

  /** The user id from the last `session:welcome`. */
  user: string | undefined;

  constructor(private readonly options: ClientOptions) {
    this.urls = options.urls?.length ? [...options.urls] : options.url ? [options.url] : [];
    if (this.urls.length === 0) throw new TypeError("TeamchatClient needs `url` or `urls`");
    if (options.token === undefined && !options.getToken) throw new TypeError("TeamchatClient needs `token` or `getToken`");
    this.httpBase = options.httpUrl ?? httpBaseOf(this.urls[0]!);
    this.WebSocketImpl = (options.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket) as WebSocketConstructor | undefined;
    this.backoff = new Backoff(options.reconnect?.baseMs ?? 500, options.reconnect?.maxMs ?? 30_000);
    this.transports = options.transports?.length ? [...options.transports] : ["websocket", "sse", "polling"];
    this.outbox = new Outbox({
      ready: (team) => this.rooms.get(team)?.status === "ready",
      transmit: (frame) => this.transmit(frame),
      nextRid: () => this.nextRid(),
      epoch: (team) => this.rooms.get(team)?.stream.currentEpoch(),
    });
    this.typingNotifier = new TypingNotifier((type, team) => this.rooms.get(team)?.status === "ready" && this.transmit({ type, team }));
    this.receipts = new ReceiptCoalescer(
      (team, seq) => this.rooms.get(team)?.status === "ready" && this.transmit({ type: "receipt:update", team, seq }),
    );
  }

  get state(): ClientState {
    return this.currentState;
  }

  /** The transport of the current (or next) connection. */
  get transport(): Transport {
    return this.transports[this.transportIndex % this.transports.length]!;
  }

  on<K extends keyof ClientEvents>(event: K, handler: (value: ClientEvents[K]) => void): () => void {
    return this.events.on(event, handler);
  }

  connect(): void {
    if (this.currentState !== "idle" && this.currentState !== "closed") return;
    this.setState("connecting");
    void this.open();
  }

  close(): void {
    if (this.currentState === "closed") return;
    this.setState("closed");
    this.generation++;
    const closed = new TeamchatError("closed", "the client was closed");
    this.teardown(closed);
    this.connection?.close(1000, "client closed");
  }

  join(team: string): Promise<RoomJoined> {
    if (this.currentState === "closed") return Promise.reject(new TeamchatError("closed", "the client is closed", { team }));
    let room = this.rooms.get(team);
    if (room?.status === "ready" && room.joined) return Promise.resolve(room.joined);
    if (!room) {
      room = { stream: new TeamStream(), status: "pending", waiters: [] };
      this.rooms.set(team, room);
      if (this.currentState === "open") this.sendJoin(team, room);
    }
    const waiting = room;
    return new Promise((resolve, reject) => waiting.waiters.push({ resolve, reject }));
  }

  async leave(team: string): Promise<void> {
    const room = this.rooms.get(team);
    if (!room) return;
    this.forgetRoom(team, room, new TeamchatError("not_joined", "the team was left", { team }));
    if (room.status === "pending") return;
    const rid = this.nextRid();
    if (!this.transmit({ type: "room:leave", team, rid })) return;
    // Resolved by room:left, its room:error, or the connection's end (which leaves too).
    await new Promise<void>((resolve) => this.leaves.set(rid, resolve));
  }

  send(team: string, body: string, meta?: Meta, options: SendOptions = {}): Promise<MessageAck> {
    const refused = this.refuse(team);
    if (refused) return refused;
    this.stopTyping(team);
    const frame: ClientFrame = { type: "message:send", team, client_id: newClientId(), body };
    if (meta !== undefined) frame.meta = meta;
    if (options.parent !== undefined) frame.parent = options.parent;
    if (options.mentions?.length) frame.mentions = options.mentions;
    if (options.attachments?.length) frame.attachments = options.attachments;
    return this.outbox.push(team, frame, true);
  }

  edit(team: string, seq: number, body: string): Promise<MessageAck> {
    return this.refuse(team) ?? this.outbox.push(team, { type: "message:edit", team, seq, body }, false);
  }

  delete(team: string, seq: number): Promise<MessageAck> {
    return this.refuse(team) ?? this.outbox.push(team, { type: "message:delete", team, seq }, false);
  }

  /** Pins (or, with `false`, unpins) a message; acked without `offset` when it already was. */
  pin(team: string, seq: number, pinned = true): Promise<MessageAck> {
    const type = pinned ? "message:pin" : "message:unpin";
    return this.refuse(team) ?? this.outbox.push(team, { type, team, seq }, false);
  }

  /** Adds (or, with `false`, removes) this user's `emoji` reaction to a message; acked
   * without `offset` when it already was so. */
  react(team: string, seq: number, emoji: string, add = true): Promise<MessageAck> {
    const type = add ? "reaction:add" : "reaction:remove";
    return this.refuse(team) ?? this.outbox.push(team, { type, team, seq, emoji }, false);
  }

  /** Loads the user's unread counts in every team of the token; from then on the client
   * keeps them live and emits `unread` for each team whose counts change. */
  async unread(): Promise<TeamUnread[]> {
    let token = this.token;
    if (token === undefined || isExpired(token, Date.now(), 5_000)) token = await this.obtainToken();
    this.unreadBook.load(await fetchUnread(this.httpBase, token));
    return this.unreadBook.all();
  }

  /** A team's unread counts as last loaded and kept live (`undefined` before `unread()`). */
  unreadCounts(team: string): TeamUnread | undefined {
    return this.unreadBook.get(team);
  }

  /** The team's pinned messages, most recently pinned first. */
  async pins(team: string): Promise<HistoryPage> {
    let token = this.token;
    if (token === undefined || isExpired(token, Date.now(), 5_000)) token = await this.obtainToken();
    return fetchPins(this.httpBase, team, token);
  }

  /** Call on every keystroke. */
  typing(team: string): void {
    if (this.rooms.has(team)) this.typingNotifier.keystroke(team);
  }

  stopTyping(team: string): void {
    this.typingNotifier.stop(team);
  }

  /** The user has read the team up to `seq`. */
  markRead(team: string, seq: number): void {
    if (!this.rooms.has(team)) return;
    this.receipts.mark(team, seq);
    this.unreadChanged(team, this.unreadBook.read(team, seq));
  }

  presence(team: string): Map<string, PresenceInfo> {
    return this.presenceBook.get(team);
  }

  /** The `since` the next rejoin of the team will resume from. */
  lastOffset(team: string): Since | undefined {
    return this.rooms.get(team)?.stream.since();
  }

  async history(team: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    let token = this.token;
    if (token === undefined || isExpired(token, Date.now(), 5_000)) token = await this.obtainToken();
    return fetchHistory(this.httpBase, team, token, query);
  }

  /** A thread's replies, oldest first (`after` a seq, `limit` 1..200). */
  async replies(team: string, parent: number, query: { after?: number; limit?: number } = {}): Promise<HistoryPage> {
    let token = this.token;
    if (token === undefined || isExpired(token, Date.now(), 5_000)) token = await this.obtainToken();
    return fetchHistory(this.httpBase, team, token, query, parent);
  }

  // --- connection lifecycle ---

  private async open(): Promise<void> {
    const generation = ++this.generation;
    const transport = this.transport;
    const WebSocketImpl = this.WebSocketImpl;
    let codec: Codec | undefined;
    let token: string;
    if (transport === "websocket") {
      try {
        if (!WebSocketImpl) throw new TeamchatError("no_websocket", "no WebSocket: pass one (in Node, the `ws` package) as options.WebSocket");
        codec = await loadCodec(this.options.codec ?? "json");
      } catch (error) {
        if (generation === this.generation) this.fail(toError(error, "codec_unavailable"));
        return;
      }
    }
    try {
      token = await this.obtainToken();
    } catch (error) {
      if (generation !== this.generation) return;
      this.emitError({ type: "error", code: "token_unavailable", message: `getToken failed: ${String(error)}` });
      this.scheduleReconnect(false);
      return;
    }
    if (generation !== this.generation) return;
    this.welcomed = false;
    const base = this.urls[this.urlIndex % this.urls.length]!;
    const handlers = {
      frame: (frame: ServerFrame) => {
        if (this.connection === link) this.onFrame(frame);
      },
      closed: (code: number, reason: string) => {
        if (this.connection === link) this.onClose(code, reason);
      },
    };
    let link: Link;
    if (transport === "websocket") {
      const url = `${base}${base.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
      link = new Connection(WebSocketImpl!, url, codec!, handlers);
    } else {
      // The HTTP fallback speaks JSON; each gateway's HTTP base is its WebSocket URL's.
      const httpBase = this.options.httpUrl ?? httpBaseOf(base);
      link = new HttpLink(transport, httpBase, token, this.fetchImpl(), handlers);
    }
    this.connection = link;
  }

  private fetchImpl(): typeof fetch {
    return this.options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  private async obtainToken(): Promise<string> {
    const token = this.options.getToken ? await this.options.getToken() : this.options.token!;
    this.token = token;
    this.tokenAt = Date.now();
    return token;
  }

  private onWelcome(heartbeatMs: number, user: string): void {
    this.user = user;
    this.welcomed = true;
    this.unwelcomed = 0;
    if (this.transportIndex % this.transports.length !== 0) this.scheduleUpgrade();
    this.connection!.heartbeat(heartbeatMs);
    this.setState("open");
    this.timers.stable = setTimeout(() => this.backoff.reset(), STABLE_AFTER_MS);
    this.scheduleRefresh();
    for (const [team, room] of this.rooms) this.sendJoin(team, room);
  }

  private onClose(code: number, reason: string): void {
    this.connection = undefined;
    clearTimeout(this.timers.stable);
    clearTimeout(this.timers.upgrade);
    // A connection that died before its welcome (no close of the gateway's own) while the
    // gateway answers plain HTTP: this transport is blocked on this network.
    if (!this.welcomed && BLOCKED_LIKE.includes(code) && this.transports.length > 1) void this.checkBlocked(this.transportIndex);
    clearTimeout(this.timers.refresh);
    this.refreshRid = undefined;
    this.events.emit("close", { code, reason });
    if (this.currentState === "closed") return;
    this.outbox.disconnected();
    this.typingNotifier.forget();
    for (const resolve of this.leaves.values()) resolve();
    this.leaves.clear();
    for (const room of this.rooms.values()) {
      clearTimeout(room.retry);
      Object.assign(room, { status: "pending", joinRid: undefined, joined: undefined, retry: undefined });
    }
    const action = closeAction(code);
    if (action === "fatal" || (action === "new-token" && !this.options.getToken)) {
      const expired = code === 4003;
      const kind = expired ? "token_expired" : reason === "revoked" ? "revoked" : "unauthorized";
      this.fail(new TeamchatError(kind, reason || (expired ? "token expired" : "invalid token")), code);
      return;
    }
    this.urlIndex++;
    this.scheduleReconnect(action === "long");
  }

  /** Counts a failed connection against its transport if the gateway is up (its
   *  `/healthz` answers); after two in a row the next transport is used. */
  private async checkBlocked(index: number): Promise<void> {
    const base = this.urls[this.urlIndex % this.urls.length]!;
    try {
      const res = await this.fetchImpl()(`${this.options.httpUrl ?? httpBaseOf(base)}/healthz`);
      if (!res.ok) return;
    } catch {
      return; // The gateway is down, not the transport blocked.
    }
    if (index !== this.transportIndex || this.welcomed) return;
    if (++this.unwelcomed < FAILURES_BEFORE_FALLBACK) return;
    this.transportIndex++;
    this.unwelcomed = 0;
    this.events.emit("transport", this.transport);
  }

  /** On a fallback, tries WebSocket again now and then: when a probe is welcomed, the
   *  link is closed and the next connection is a WebSocket (rooms resume with `since`). */
  private scheduleUpgrade(): void {
    clearTimeout(this.timers.upgrade);
    const WebSocketImpl = this.WebSocketImpl;
    if (!WebSocketImpl || this.transports[0] !== "websocket") return;
    const generation = this.generation;
    this.timers.upgrade = setTimeout(() => {
      if (generation !== this.generation || this.currentState !== "open") return;
      const base = this.urls[this.urlIndex % this.urls.length]!;
      const url = `${base}${base.includes("?") ? "&" : "?"}token=${encodeURIComponent(this.token ?? "")}`;
      let socket: WebSocketLike;
      try {
        socket = new WebSocketImpl(url, ["teamchat.v1.json"]);
      } catch {
        return this.scheduleUpgrade();
      }
      socket.onerror = () => {};
      socket.onclose = () => {
        if (generation === this.generation && this.transportIndex % this.transports.length !== 0) this.scheduleUpgrade();
      };
      socket.onmessage = () => {
        // Welcomed: WebSocket works here again.
        socket.onclose = null;
        socket.close(1000, "probe");
        if (generation !== this.generation || this.currentState !== "open") return;
        this.transportIndex = 0;
        this.unwelcomed = 0;
        this.events.emit("transport", this.transport);
        this.connection?.close(1000, "upgrading to WebSocket");
      };
    }, UPGRADE_PROBE_MS);
  }

  private scheduleReconnect(long: boolean): void {
    this.setState("reconnecting");
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => void this.open(), this.backoff.next(long));
  }

  /** Gives up for good: state closed, every waiting request failed, the app told. */
  private fail(error: TeamchatError, close?: number): void {
    this.setState("closed");
    this.generation++;
    this.teardown(error);
    this.emitError({ type: "error", code: error.code, message: error.message, ...(close !== undefined ? { close } : {}) });
  }

  private teardown(error: TeamchatError): void {
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this.timers = {};
    this.outbox.fail(error);
    for (const [team, room] of this.rooms) this.forgetRoom(team, room, error);
    for (const resolve of this.leaves.values()) resolve();
    this.leaves.clear();
  }

  private scheduleRefresh(): void {
    clearTimeout(this.timers.refresh);
    if (!this.options.getToken || this.token === undefined) return;
    const delay = refreshDelayMs(this.token, this.tokenAt, Date.now());
    if (delay === undefined) return;
    const generation = this.generation;
    this.timers.refresh = setTimeout(() => {
      this.obtainToken().then(
        (token) => {
          if (generation !== this.generation) return;
          this.refreshRid = this.nextRid();
          this.transmit({ type: "token:refresh", token, rid: this.refreshRid });
        },
        (error: unknown) => {
          if (generation !== this.generation) return;
          this.emitError({ type: "error", code: "token_unavailable", message: `getToken failed: ${String(error)}` });
          this.timers.refresh = setTimeout(() => this.scheduleRefresh(), TOKEN_RETRY_MS);
        },
      );
    }, delay);
  }

  // --- rooms ---

  private sendJoin(team: string, room: Room): void {
    clearTimeout(room.retry);
    room.retry = undefined;
    room.status = "joining";
    room.joined = undefined;
    room.joinRid = this.nextRid();
    const since = room.stream.since();
    this.transmit({ type: "room:join", team, rid: room.joinRid, ...(since ? { since } : {}) });
  }

  private forgetRoom(team: string, room: Room, error: TeamchatError): void {
    clearTimeout(room.retry);
    this.rooms.delete(team);
    for (const waiter of room.waiters) waiter.reject(error);
    this.outbox.fail(error, team);
    this.typingNotifier.forget(team);
    this.receipts.forget(team);
    this.presenceBook.forget(team);
  }

  /** The server took the connection out of a team: forgotten, not rejoined (a new token
   * that lists the team is needed, and the app decides whether to join again). */
  private onRemoved(team: string, reason: string): void {
    const room = this.rooms.get(team);
    if (!room) return;
    this.forgetRoom(team, room, new TeamchatError(reason === "removed" ? "removed" : "forbidden", `left the team: ${reason}`, { team }));
    this.events.emit("left", { team, reason });
  }

  private onJoined(frame: RoomJoined): void {
    const room = this.rooms.get(frame.team);
    if (!room || room.joinRid !== frame.rid) return;
    room.joined = frame;
    const reset = room.stream.joined(frame);
    if (reset) this.events.emit("reset", { team: frame.team, reason: reset });
  }

  /** `receipt:list` ends a join's answer (after any replay and `presence:list`). */
  private onJoinAnswered(team: string): void {
    const room = this.rooms.get(team);
    if (!room || room.status !== "joining" || !room.joined) return;
    room.status = "ready";
    const joined = room.joined;
    for (const waiter of room.waiters.splice(0)) waiter.resolve(joined);
    this.outbox.flush(team);
    this.receipts.resume(team);
  }

  private onJoinError(team: string, room: Room, frame: ErrorFrame): void {
    if (isRetryable(frame.code)) {
      room.status = "pending";
      room.retry = setTimeout(() => {
        if (this.currentState === "open" && room.status === "pending") this.sendJoin(team, room);
      }, frame.retry_after_ms ?? JOIN_RETRY_MS);
      return;
    }
    // A rejoin nobody waits for (after a reconnect) is reported as an event.
    if (room.waiters.length === 0) this.emitError(frame);
    this.forgetRoom(team, room, TeamchatError.fromFrame(frame));
  }

  /** Emits a team's new counts, or reloads them all (soon, once for many changes) when the
   * events alone cannot tell. */
  private unreadChanged(team: string, change: Change): void {
    if (change === "changed") {
      const counts = this.unreadBook.get(team);
      if (counts) this.events.emit("unread", counts);
    } else if (change === "reload" && this.timers.unread === undefined) {
      this.timers.unread = setTimeout(() => {
        this.timers.unread = undefined;
        if (this.currentState === "closed") return;
        this.unread().then(
          (all) => all.forEach((counts) => this.events.emit("unread", counts)),
          () => {},
        );
      }, 500);
    }
  }

  // --- frames ---

  private onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case "session:welcome":
        this.onWelcome(frame.heartbeat_ms, frame.user);
        this.events.emit("welcome", frame);
        return;
      case "room:joined":
        return this.onJoined(frame);
      case "room:left":
        if (frame.rid !== undefined || frame.reason === undefined) return this.settleLeave(frame.rid);
        return this.onRemoved(frame.team, frame.reason);
      case "notify":
        this.events.emit("notify", frame);
        return;
      case "mention":
        this.unreadChanged(frame.team, this.unreadBook.mention(frame.team, frame.seq));
        this.events.emit("mention", frame);
        return;
      case "message:ack": {
        const sent = this.outbox.ack(frame);
        const stream = sent && this.rooms.get(sent.team)?.stream;
        // A resend's ack repeats the first one; from before a stream loss it is not ours to count.
        if (stream && frame.offset !== undefined && sent.epoch === stream.currentEpoch()) stream.acked(frame.offset);
        return;
      }
      case "message:new": {
        const stream = this.rooms.get(frame.team)?.stream;
        // Our own message replayed after a reconnect settles its send instead.
        if (!stream?.accept(frame.offset)) return;
        const mine = frame.user === this.user;
        const mentionsMe = this.user !== undefined && (frame.mentions?.includes(this.user) ?? false);
        this.unreadChanged(frame.team, this.unreadBook.message(frame.team, frame.seq, mine, mentionsMe));
        if (!this.outbox.replayed(frame)) this.events.emit("message", frame);
        return;
      }
      case "message:edited":
        if (this.rooms.get(frame.team)?.stream.accept(frame.offset)) this.events.emit("edit", frame);
        return;
      case "message:deleted":
        if (!this.rooms.get(frame.team)?.stream.accept(frame.offset)) return;
        this.unreadChanged(frame.team, this.unreadBook.deleted(frame.team, frame.seq));
        this.events.emit("delete", frame);
        return;
      case "message:pinned":
      case "message:unpinned":
        if (this.rooms.get(frame.team)?.stream.accept(frame.offset)) this.events.emit("pin", frame);
        return;
      case "reaction:added":
      case "reaction:removed":
        if (this.rooms.get(frame.team)?.stream.accept(frame.offset)) this.events.emit("reaction", frame);
        return;
      case "receipt:update":
        if (!this.rooms.get(frame.team)?.stream.accept(frame.offset)) return;
        // Read on another of the user's devices.
        if (frame.user === this.user) this.unreadChanged(frame.team, this.unreadBook.read(frame.team, frame.seq));
        this.events.emit("receipt", frame);
        return;
      case "receipt:list": {
        if (!this.rooms.has(frame.team)) return;
        const mine = frame.receipts.find((r) => r.user === this.user);
        if (mine) this.receipts.known(frame.team, mine.seq);
        this.onJoinAnswered(frame.team);
        this.events.emit("receipts", frame);
        return;
      }
      case "presence:list":
        if (this.rooms.has(frame.team)) this.events.emit("presence", { team: frame.team, users: this.presenceBook.list(frame) });
        return;
      case "presence:update":
        if (this.rooms.has(frame.team)) this.events.emit("presence", { team: frame.team, users: this.presenceBook.update(frame) });
        return;
      case "typing:start":
      case "typing:stop":
        if (this.rooms.has(frame.team)) {
          this.events.emit("typing", { team: frame.team, user: frame.user, typing: frame.type === "typing:start" });
        }
        return;
      case "token:refreshed":
        if (frame.rid === this.refreshRid) this.scheduleRefresh();
        return;
      case "error":
      case "room:error":
        return this.onError(frame);
      default:
        return; // pong, and types a later gateway may add
    }
  }

  private onError(frame: ErrorFrame): void {
    if (frame.rid !== undefined) {
      if (this.outbox.error(frame)) return;
      if (this.leaves.has(frame.rid)) return this.settleLeave(frame.rid);
      for (const [team, room] of this.rooms) {
        if (room.joinRid === frame.rid) return this.onJoinError(team, room, frame);
      }
    }
    this.emitError(frame);
  }

  private settleLeave(rid: string | undefined): void {
    if (rid === undefined) return;
    this.leaves.get(rid)?.();
    this.leaves.delete(rid);
  }

  // --- helpers ---

  private refuse(team: string): Promise<never> | undefined {
    if (this.currentState === "closed") return Promise.reject(new TeamchatError("closed", "the client is closed", { team }));
    if (!this.rooms.has(team)) return Promise.reject(new TeamchatError("not_joined", "join the team first", { team }));
    return undefined;
  }

  private transmit(frame: ClientFrame): boolean {
    return this.connection?.send(frame) ?? false;
  }

  private nextRid(): string {
    return (++this.ridCounter).toString(36);
  }

  private setState(state: ClientState): void {
    if (state === this.currentState) return;
    this.currentState = state;
    this.events.emit("state", state);
  }

  private emitError(frame: ErrorFrame): void {
    this.events.emit("error", frame);
  }
}

function toError(error: unknown, code: string): TeamchatError {
  return error instanceof TeamchatError ? error : new TeamchatError(code, String(error));
}

/** A UUID for `client_id`; randomUUID needs a secure context, getRandomValues does not. */
function newClientId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
