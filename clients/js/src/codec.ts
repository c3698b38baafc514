import { TeamchatError } from "./errors.js";

/** Encodes frames for one subprotocol and decodes what the server sends. */
export interface Codec {
  readonly subprotocol: string;
  encode(frame: object): string | Uint8Array;
  decode(data: unknown): unknown;
}

export type CodecName = "json" | "msgpack";

const utf8 = new TextDecoder();

function bytesOf(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

export const jsonCodec: Codec = {
  subprotocol: "teamchat.v1.json",
  encode: (frame) => JSON.stringify(frame),
  decode(data) {
    const bytes = bytesOf(data);
    return JSON.parse(bytes ? utf8.decode(bytes) : String(data)) as unknown;
  },
};

/**
 * Loads a codec. MessagePack needs the optional `@msgpack/msgpack` package, imported only
 * here; a browser needs an importmap entry for it.
 */
export async function loadCodec(name: CodecName): Promise<Codec> {
  if (name === "json") return jsonCodec;
  let msgpack: typeof import("@msgpack/msgpack");
  try {
    msgpack = await import("@msgpack/msgpack");
  } catch (cause) {
    throw new TeamchatError(
      "codec_unavailable",
      `codec "msgpack" needs the @msgpack/msgpack package (in a browser, map it with an importmap): ${String(cause)}`,
    );
  }
  return {
    subprotocol: "teamchat.v1.msgpack",
    encode: (frame) => msgpack.encode(frame),
    decode(data) {
      const bytes = bytesOf(data);
      if (!bytes) throw new TeamchatError("bad_frame", "a text frame on a msgpack connection");
      return msgpack.decode(bytes);
    },
  };
}
