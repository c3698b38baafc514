import { decode, encode } from "@msgpack/msgpack";
import { afterEach, describe, expect, it, vi } from "vitest";
import { jsonCodec, loadCodec } from "../../src/codec.js";
import type { MessageNew } from "../../src/index.js";
import { FakeWebSocket, message, newClient, resetFakes } from "./fake-websocket.js";

afterEach(resetFakes);

describe("codecs", () => {
  it("round-trips a frame through msgpack", async () => {
    const codec = await loadCodec("msgpack");
    expect(codec.subprotocol).toBe("teamchat.v1.msgpack");
    const frame = { type: "message:send", team: "t1", client_id: "c", body: "héllo", meta: { n: 1, list: [true, null] }, rid: "1" };
    const bytes = codec.encode(frame);
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(codec.decode(bytes)).toEqual(frame);
    const view = bytes as Uint8Array;
    expect(codec.decode(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength))).toEqual(frame);
  });

  it("decodes JSON text and binary", () => {
    expect(jsonCodec.decode('{"type":"pong"}')).toEqual({ type: "pong" });
    expect(jsonCodec.decode(new TextEncoder().encode('{"type":"pong"}'))).toEqual({ type: "pong" });
  });

  it("speaks msgpack end to end when chosen", async () => {
    FakeWebSocket.decode = (data) => decode(data as Uint8Array);
    FakeWebSocket.encode = (frame) => encode(frame).slice().buffer;
    const client = newClient({ codec: "msgpack" });
    const seen: MessageNew[] = [];
    client.on("message", (m) => seen.push(m));
    client.connect();
    // Loading the codec is a real module import, not just a microtask.
    await vi.waitFor(() => expect(FakeWebSocket.instances).toHaveLength(1));
    const socket = FakeWebSocket.last;
    expect(socket.protocols).toEqual(["teamchat.v1.msgpack"]);
    expect(socket.binaryType).toBe("arraybuffer");
    socket.welcome();
    const joined = client.join("t1");
    socket.answerJoin("t1", {});
    await joined;
    socket.receive(message("t1", 1));
    expect(seen.map((m) => m.body)).toEqual(["body 1"]);
    expect(socket.sent[0]).toBeInstanceOf(Uint8Array);
    client.close();
  });
});
