// Frames of the client protocol v1 (docs/protocol.md), with the server's type names, and the
// client's own option and event types.

export interface SessionWelcome {
  type: "session:welcome";
  user: string;
  session: string;
  heartbeat_ms: number;
  max_frame: number;
}

export interface RoomJoined {
  type: "room:joined";
  team: string;
  epoch: string;
  /** Offset of the newest durable event at the join ("0" for none). */
  offset: string;
  /** Newest message seq (0 for none). */
  seq: number;
  /** Present when the join asked to resume (`since`). */
  recovered?: boolean;
  rid?: string;
}

export interface RoomLeft {
  type: "room:left";
  team: string;
  rid?: string;
  /** Set when the server ended the membership (no `rid`): `forbidden` (a refreshed token no
   * longer lists the team) or `removed` (the application's backend removed the user). */
  reason?: "forbidden" | "removed" | (string & {});
}

/** What the application's backend sent this user (server API); not stored. */
export interface Notify {
  type: "notify";
  data: Record<string, unknown>;
}

export interface MessageAck {
  type: "message:ack";
  /** Present in the ack of a send. */
  client_id?: string;
  team: string;
  seq: number;
  id: string;
  /** Absent when nothing was appended (a pin of a pinned message, say). */
  offset?: string;
  ts: number;
  rid?: string;
}

export type Meta = Record<string, unknown>;

/** A file a message links to: uploaded by the application to its own store (teamchat
 * carries the link, checked: an `https://` URL, a name, a MIME type, a size). */
export interface Attachment {
  url: string;
  name: string;
  mime: string;
  size: number;
  width?: number;
  height?: number;
  thumb_url?: string;
}

/** What a message may carry beside its body (`send`'s fourth argument). */
export interface SendOptions {
  /** The seq of a top-level message of the team: the message is a reply in its thread. */
  parent?: number;
  /** User ids the message mentions (up to 50): each is told with a `mention` event. */
  mentions?: string[];
  /** Up to 10 files. */
  attachments?: Attachment[];
}

export interface MessageNew {
  type: "message:new";
  team: string;
  seq: number;
  id: string;
  client_id: string;
  user: string;
  name: string | null;
  body: string;
  meta: Meta | null;
  ts: number;
  offset: string;
  /** Present on a thread reply: its top-level message's seq. */
  parent?: number;
  /** Present when the message mentions users. */
  mentions?: string[];
  /** Present when the message links to files. */
  attachments?: Attachment[];
}

/** A message of `team` mentioned this user (`user` wrote it); sent whether or not the team
 * is joined, so an app can badge a team it does not show. Not stored. */
export interface Mention {
  type: "mention";
  team: string;
  seq: number;
  user: string;
  ts: number;
}

export interface MessageEdited {
  type: "message:edited";
  team: string;
  seq: number;
  body: string;
  user: string;
  ts: number;
  offset: string;
}

export interface MessageDeleted {
  type: "message:deleted";
  team: string;
  seq: number;
  user: string;
  ts: number;
  offset: string;
}

/** A message was pinned (or unpinned) by `user`. */
export interface MessagePinned {
  type: "message:pinned" | "message:unpinned";
  team: string;
  seq: number;
  user: string;
  ts: number;
  offset: string;
}

/** `user` added (or removed) their `emoji` reaction to message `seq`. */
export interface ReactionFrame {
  type: "reaction:added" | "reaction:removed";
  team: string;
  seq: number;
  user: string;
  emoji: string;
  ts: number;
  offset: string;
}

export interface TypingFrame {
  type: "typing:start" | "typing:stop";
  team: string;
  user: string;
}

export interface ReceiptUpdate {
  type: "receipt:update";
  team: string;
  user: string;
  seq: number;
  offset: string;
}

export interface ReceiptList {
  type: "receipt:list";
  team: string;
  receipts: { user: string; seq: number }[];
}

export interface PresenceList {
  type: "presence:list";
  team: string;
  users: { user: string; name?: string | null; since?: number }[];
}

export interface PresenceUpdate {
  type: "presence:update";
  team: string;
  user: string;
  status: "online" | "offline";
}

export type ErrorCode =
  | "bad_request"
  | "unknown_type"
  | "forbidden"
  | "not_joined"
  | "too_many_rooms"
  | "rate_limited"
  | "too_large"
  | "quota_exceeded"
  | "not_found"
  | "unavailable";

export interface ErrorFrame {
  type: "error" | "room:error";
  /** A protocol error code, or one of the client's own (see TeamchatError). */
  code: ErrorCode | (string & {});
  message: string;
  rid?: string;
  team?: string;
  retry_after_ms?: number;
  /** Set on the client's own error for a fatal close (4001, 4003 without getToken). */
  close?: number;
}

export interface Pong {
  type: "pong";
  rid?: string;
}

export interface TokenRefreshed {
  type: "token:refreshed";
  exp: number;
  rid?: string;
}

export type ServerFrame =
  | SessionWelcome
  | RoomJoined
  | RoomLeft
  | MessageAck
  | MessageNew
  | MessageEdited
  | MessageDeleted
  | MessagePinned
  | ReactionFrame
  | TypingFrame
  | ReceiptUpdate
  | ReceiptList
  | PresenceList
  | PresenceUpdate
  | ErrorFrame
  | Pong
  | TokenRefreshed
  | Notify
  | Mention;

/** A frame the client sends. */
export interface ClientFrame {
  type: string;
  rid?: string;
  [field: string]: unknown;
}

/** A row of HTTP history: the fields of `message:new` (without `type`) plus edit/delete state. */
export interface HistoryMessage extends Omit<MessageNew, "type"> {
  edited_at: number | null;
  deleted: boolean;
  /** Pinned (may trail the live events by the sync lag). */
  pinned: boolean;
  /** Top-level messages: replies in the thread (deleted ones count; may trail the live
   * events by the sync lag). Absent on a reply. */
  reply_count?: number;
  /** Top-level messages: when the newest reply was sent, `null` without replies. */
  last_reply_ts?: number | null;
  /** Per emoji, ordered by first reaction; `me` when this user reacted (may trail the
   * live events by the sync lag). */
  reactions: ReactionCount[];
}

export interface ReactionCount {
  emoji: string;
  count: number;
  me: boolean;
}

export interface HistoryPage {
  messages: HistoryMessage[];
  has_more: boolean;
}

export interface HistoryQuery {
  /** Messages with a lower seq, newest first. */
  before?: number;
  /** Messages with a higher seq, oldest first. */
  after?: number;
  /** 1..200, 50 by default. */
  limit?: number;
  /** Leave thread replies out. */
  topLevel?: boolean;
}

/** A team's unread counts (`GET /v1/me/unread`), kept live by the client. */
export interface TeamUnread {
  team: string;
  /** The newest message seq. */
  seq: number;
  /** The user's read position (receipt seq; 0 without one). */
  read: number;
  /** Messages above `read` by others, not deleted (thread replies included). */
  unread: number;
  /** How many of those mention the user. */
  mentions: number;
}

export interface PresenceInfo {
  name?: string;
  since?: number;
}

export interface Since {
  offset: string;
  epoch: string;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** How the client reaches a gateway: WebSocket, or an HTTP fallback (docs/protocol.md §8.5). */
export type Transport = "websocket" | "sse" | "polling";

/** Why a team's events could not be continued: the app reloads it over HTTP history. */
export type ResetReason = "stream_lost" | "not_recovered";

export interface ClientEvents {
  state: ClientState;
  welcome: SessionWelcome;
  message: MessageNew;
  edit: MessageEdited;
  delete: MessageDeleted;
  /** `message:pinned` or `message:unpinned`. */
  pin: MessagePinned;
  /** `reaction:added` or `reaction:removed`. */
  reaction: ReactionFrame;
  typing: { team: string; user: string; typing: boolean };
  receipt: ReceiptUpdate;
  receipts: ReceiptList;
  presence: { team: string; users: Map<string, PresenceInfo> };
  reset: { team: string; reason: ResetReason };
  /** The server ended the membership of a team; the client does not rejoin it. */
  left: { team: string; reason: string };
  notify: Notify;
  mention: Mention;
  /** A team's unread counts changed (once `unread()` loaded them). */
  unread: TeamUnread;
  /** The client moved to another transport (a fallback, or back to WebSocket). */
  transport: Transport;
  error: ErrorFrame;
  close: { code: number; reason: string };
}

/** The part of the WebSocket API the client uses (browsers' WebSocket and `ws` both fit). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** Gateway WebSocket URL, e.g. ws://127.0.0.1:8080/ws. */
  url?: string;
  /** Several gateways: each reconnect goes to the next. */
  urls?: string[];
  /** Base of HTTP history; by default the first URL with ws→http and no path. */
  httpUrl?: string;
  token?: string;
  /** Called on every (re)connect and before the token expires. */
  getToken?: () => string | Promise<string>;
  codec?: "json" | "msgpack";
  /** WebSocket constructor; default globalThis.WebSocket (in Node pass `ws`). */
  WebSocket?: unknown;
  reconnect?: { baseMs?: number; maxMs?: number };
  /** Transports in order of preference (default `["websocket", "sse", "polling"]`): after
   *  two connections in a row that end before their welcome, the next one is used; on a
   *  fallback, WebSocket is tried again every minute and used once it works. */
  transports?: Transport[];
  /** fetch for the HTTP transports (default globalThis.fetch). */
  fetch?: typeof fetch;
}
