import type { Codec } from "./codec.js";
import type { ClientFrame, ServerFrame, WebSocketConstructor, WebSocketLike } from "./types.js";

/** Until `session:welcome` names the heartbeat, a connection must answer within this. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** Close code the client uses when the server went silent (the one the server uses too). */
export const HEARTBEAT_CLOSE = 4000;

const OPEN = 1;

/** What the client talks through: a WebSocket (`Connection`) or an HTTP fallback (`HttpLink`). */
export interface Link {
  /** Sends a frame; false when the link cannot take it now. */
  send(frame: ClientFrame): boolean;
  /** Starts watching the heartbeat the server announced. */
  heartbeat(ms: number): void;
  /** Closes from this side; the handlers hear of it at once. */
  close(code: number, reason: string): void;
}

export interface ConnectionHandlers {
  frame(frame: ServerFrame): void;
  /** Called once, for a close by either side. */
  closed(code: number, reason: string): void;
}

/**
 * One WebSocket: encodes and decodes frames, and watches the heartbeat. Browsers answer
 * the server's pings without showing them, so after `heartbeat_ms` without any frame the
 * client sends a `ping` of its own; after twice that it gives the connection up (close
 * 4000), without waiting for a close handshake a dead network would never finish.
 */
export class Connection implements Link {
  private readonly ws: WebSocketLike | undefined;
  private lastFrameAt = Date.now();
  private heartbeatMs: number | undefined;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private done = false;

  constructor(
    WebSocket: WebSocketConstructor,
    url: string,
    private readonly codec: Codec,
    private readonly handlers: ConnectionHandlers,
  ) {
    let ws: WebSocketLike;
    try {
      ws = new WebSocket(url, [codec.subprotocol]);
    } catch (error) {
      queueMicrotask(() => this.finish(1006, String(error)));
      return;
    }
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.finish(event.code, event.reason);
    // An error is followed by a close event; `ws` needs a listener so it does not throw.
    ws.onerror = () => {};
    this.ws = ws;
    this.watchdog = setTimeout(() => this.close(HEARTBEAT_CLOSE, "connect timeout"), CONNECT_TIMEOUT_MS);
  }

  /** Sends a frame; false when the socket is not open. */
  send(frame: ClientFrame): boolean {
    if (this.done || this.ws?.readyState !== OPEN) return false;
    this.ws.send(this.codec.encode(frame));
    return true;
  }

  /** Starts watching the heartbeat the server announced. */
  heartbeat(ms: number): void {
    this.heartbeatMs = ms;
    this.check();
  }

  /** Closes from this side; the handlers hear of it at once. */
  close(code: number, reason: string): void {
    try {
      this.ws?.close(code, reason);
    } catch {
      // Already closing, or never opened: nothing more to do.
    }
    this.finish(code, reason);
  }

  private receive(data: unknown): void {
    if (this.done) return;
    this.lastFrameAt = Date.now();
    let frame: unknown;
    try {
      frame = this.codec.decode(data);
    } catch {
      return; // The server sends objects only; a frame we cannot read carries nothing for us.
    }
    if (typeof frame === "object" && frame !== null && typeof (frame as { type?: unknown }).type === "string") {
      this.handlers.frame(frame as ServerFrame);
    }
  }

  private check(): void {
    clearTimeout(this.watchdog);
    const heartbeat = this.heartbeatMs!;
    const silent = Date.now() - this.lastFrameAt;
    if (silent >= 2 * heartbeat) {
      this.close(HEARTBEAT_CLOSE, "no heartbeat");
      return;
    }
    if (silent >= heartbeat) this.send({ type: "ping" });
    const due = silent >= heartbeat ? 2 * heartbeat : heartbeat;
    this.watchdog = setTimeout(() => this.check(), due - silent);
  }

  private finish(code: number, reason: string): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.watchdog);
    this.handlers.closed(code, reason);
  }
}
