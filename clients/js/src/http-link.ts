// The HTTP fallback transports (docs/protocol.md §8.5), for networks that break WebSocket:
// an SSE stream read with fetch (so the token goes in a header, and the client, not the
// browser, decides when to reconnect), or long-polling. Either way frames are sent with
// `POST /v1/send`, one at a time and in order, and the link looks to the client like a
// WebSocket connection: frames in, a close code out.
import type { ConnectionHandlers, Link } from "./socket.js";
import type { ClientFrame, ServerFrame } from "./types.js";

export type HttpTransport = "sse" | "polling";

/** A poll answers within 25 s; one that takes much longer went missing. */
const POLL_TIMEOUT_MS = 40_000;
/** A poll whose answer was lost is asked again (same `ack`) this many times. */
const POLL_RETRIES = 3;
/** Without a byte on the stream this long (the server comments every 15 s) it is dead. */
const STREAM_SILENCE_MS = 45_000;

/** The close code an HTTP status stands for (as the WebSocket would have closed). */
function closeOf(status: number): number {
  if (status === 401 || status === 403) return 4001;
  if (status === 429) return 4029;
  return 1006;
}

export class HttpLink implements Link {
  private session: string | undefined;
  private done = false;
  private readonly abort = new AbortController();
  private sending: Promise<void> = Promise.resolve();
  private silence: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly transport: HttpTransport,
    private readonly base: string,
    private token: string,
    private readonly fetchImpl: typeof fetch,
    private readonly handlers: ConnectionHandlers,
  ) {
    void (transport === "sse" ? this.stream() : this.poll()).catch((error: unknown) => this.finish(1006, String(error)));
  }

  /** Queues a frame; its direct reply is delivered like any frame. False before the welcome. */
  send(frame: ClientFrame): boolean {
    if (this.done || this.session === undefined) return false;
    const session = this.session;
    this.sending = this.sending.then(async () => {
      if (this.done) return;
      try {
        const res = await this.request(`/v1/send?session=${encodeURIComponent(session)}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(frame),
        });
        if (res.status === 204) return;
        if (res.status !== 200) return this.finish(res.status === 404 ? 1006 : closeOf(res.status), `send: HTTP ${res.status}`);
        const reply = (await res.json()) as ServerFrame;
        // Later requests carry the token the session now holds.
        if (reply.type === "token:refreshed" && typeof frame.token === "string") this.token = frame.token;
        this.deliver(reply);
      } catch (error) {
        this.finish(1006, String(error));
      }
    });
    return true;
  }

  /** The server keeps the session alive; nothing to watch beyond the stream's silence. */
  heartbeat(): void {}

  close(code: number, reason: string): void {
    if (this.session !== undefined && this.transport === "polling" && !this.done) {
      void this.request(`/v1/poll/close?session=${encodeURIComponent(this.session)}`, { method: "POST" }).catch(() => {});
    }
    this.finish(code, reason);
  }

  private request(path: string, init: RequestInit, signal: AbortSignal = this.abort.signal): Promise<Response> {
    const headers = { ...(init.headers as Record<string, string> | undefined), authorization: `Bearer ${this.token}` };
    return this.fetchImpl(`${this.base}${path}`, { ...init, headers, signal });
  }

  private deliver(frame: ServerFrame | { type: "session:closed"; code: number; reason?: string }): void {
    if (this.done) return;
    if (frame.type === "session:welcome") this.session = (frame as { session: string }).session;
    if (frame.type === "session:closed") {
      const closed = frame as { code: number; reason?: string };
      return this.finish(closed.code, closed.reason ?? "");
    }
    this.handlers.frame(frame);
  }

  private async stream(): Promise<void> {
    const res = await this.request("/v1/events", { headers: { accept: "text/event-stream" } });
    if (res.status !== 200 || !res.body) return this.finish(closeOf(res.status), `events: HTTP ${res.status}`);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    this.watchSilence();
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.done) break;
      this.watchSilence();
      buffer += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data: "))
          .map((line) => line.slice(6))
          .join("\n");
        if (data) this.deliver(JSON.parse(data) as ServerFrame);
      }
    }
    this.finish(1006, "the stream ended");
  }

  private watchSilence(): void {
    clearTimeout(this.silence);
    this.silence = setTimeout(() => this.close(4000, "no heartbeat"), STREAM_SILENCE_MS);
  }

  private async poll(): Promise<void> {
    const opened = await this.request("/v1/poll/open", { method: "POST" });
    if (opened.status !== 200) return this.finish(closeOf(opened.status), `poll/open: HTTP ${opened.status}`);
    const first = (await opened.json()) as { session: string; frames: ServerFrame[] };
    let ack = 0;
    for (const frame of first.frames) this.deliver(frame);
    ack += first.frames.length;
    let failures = 0;
    while (!this.done) {
      let res: Response;
      // A poll of its own to give up on, without ending the link.
      const overdue = new AbortController();
      const timer = setTimeout(() => overdue.abort(), POLL_TIMEOUT_MS);
      const stop = () => overdue.abort();
      this.abort.signal.addEventListener("abort", stop);
      try {
        res = await this.request(`/v1/poll?session=${encodeURIComponent(first.session)}&ack=${ack}`, {}, overdue.signal);
      } catch (error) {
        // The answer was lost: ask again with the same ack, and get the same frames.
        if (this.done || ++failures > POLL_RETRIES) return this.finish(1006, String(error));
        continue;
      } finally {
        clearTimeout(timer);
        this.abort.signal.removeEventListener("abort", stop);
      }
      if (res.status !== 200) return this.finish(res.status === 404 ? 1006 : closeOf(res.status), `poll: HTTP ${res.status}`);
      failures = 0;
      const answer = (await res.json()) as { frames: ServerFrame[] };
      for (const frame of answer.frames) this.deliver(frame);
      ack += answer.frames.length;
    }
  }

  private finish(code: number, reason: string): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.silence);
    this.abort.abort();
    this.handlers.closed(code, reason);
  }
}
