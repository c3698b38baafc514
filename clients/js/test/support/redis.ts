// A few Redis commands over a plain socket (RESP2), so that tests can inspect and damage
// Redis without a client library or redis-cli on the machine.
import { connect } from "node:net";

export type RespValue = string | number | null | RespValue[];

/** Runs the commands in order on one connection and returns their replies. */
export async function redisCommands(url: string, commands: string[][]): Promise<RespValue[]> {
  const target = new URL(url);
  const prelude: string[][] = [];
  if (target.password) {
    const user = decodeURIComponent(target.username);
    const password = decodeURIComponent(target.password);
    prelude.push(user ? ["AUTH", user, password] : ["AUTH", password]);
  }
  const db = target.pathname.replace(/^\//, "");
  if (db) prelude.push(["SELECT", db]);
  const all = [...prelude, ...commands];
  const socket = connect(Number(target.port || 6379), target.hostname || "127.0.0.1");
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const replies: RespValue[] = [];
    socket.on("error", reject);
    socket.on("data", (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const parsed = parse(buffer, 0);
        if (!parsed) break;
        const [value, end] = parsed;
        buffer = buffer.subarray(end);
        if (value instanceof Error) {
          socket.destroy();
          reject(value);
          return;
        }
        replies.push(value);
      }
      if (replies.length === all.length) {
        socket.end();
        resolve(replies.slice(prelude.length));
      }
    });
    socket.write(all.map(encode).join(""));
  });
}

/** Deletes every key matching a glob pattern; returns how many were deleted. */
export async function deleteKeys(url: string, pattern: string): Promise<number> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [reply] = await redisCommands(url, [["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"]]);
    const [next, batch] = reply as [string, string[]];
    keys.push(...batch);
    cursor = next;
  } while (cursor !== "0");
  if (keys.length === 0) return 0;
  const replies = await redisCommands(url, chunk(keys, 500).map((batch) => ["DEL", ...batch]));
  return replies.reduce<number>((sum, n) => sum + Number(n), 0);
}

function chunk<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function encode(args: string[]): string {
  return `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("");
}

/** One reply from `pos`, or undefined while incomplete. Errors come back as values. */
function parse(buf: Buffer, pos: number): [RespValue | Error, number] | undefined {
  const lineEnd = buf.indexOf("\r\n", pos);
  if (lineEnd < 0) return undefined;
  const line = buf.toString("utf8", pos + 1, lineEnd);
  const next = lineEnd + 2;
  switch (String.fromCharCode(buf[pos]!)) {
    case "+":
      return [line, next];
    case "-":
      return [new Error(line), next];
    case ":":
      return [Number(line), next];
    case "$": {
      const length = Number(line);
      if (length < 0) return [null, next];
      if (buf.length < next + length + 2) return undefined;
      return [buf.toString("utf8", next, next + length), next + length + 2];
    }
    case "*": {
      const count = Number(line);
      if (count < 0) return [null, next];
      const items: RespValue[] = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parse(buf, at);
        if (!item) return undefined;
        if (item[0] instanceof Error) return item;
        items.push(item[0]);
        at = item[1];
      }
      return [items, at];
    }
    default:
      throw new Error(`unexpected RESP reply: ${line}`);
  }
}
