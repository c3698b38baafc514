// A Socket.IO server doing what teamchat-bench's fan-out asks of a chat server, as a peer
// to compare teamchat with: join a room, broadcast a message to the room's other members
// through the Redis Streams adapter (so members on another process get it), ack both.
//
// Environment: PORT (listens on 127.0.0.1), REDIS_URL, and REDIS_PREFIX (optional) in front
// of the adapter's stream and channel names, so the bench can delete what a run wrote.

import http from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-streams-adapter";

const port = Number(process.env.PORT ?? 3000);
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const prefix = process.env.REDIS_PREFIX ?? "";

const redis = createClient({ url: redisUrl });
redis.on("error", (error) => console.error("redis:", error.message));
await redis.connect();

// One http.Server for /readyz and Socket.IO: Socket.IO takes the requests under
// /socket.io/ and hands every other request to this listener.
const server = http.createServer((req, res) => {
  const status = req.method === "GET" && req.url === "/readyz" ? 200 : 404;
  res.writeHead(status, { "content-type": "text/plain" }).end(status === 200 ? "ready\n" : "");
});
// No Nagle: a broadcast is many small writes, each of which should leave at once (as the
// gateways and the bench's client do).
server.on("connection", (socket) => socket.setNoDelay(true));

const io = new Server(server, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  adapter: createAdapter(redis, {
    streamName: `${prefix}socket.io`,
    channelPrefix: `${prefix}socket.io`,
  }),
});

io.on("connection", (socket) => {
  socket.on("room:join", (payload, ack) => {
    const team = payload?.team;
    if (typeof team !== "string") return reply(ack, { ok: false, error: "team" });
    socket.join(team);
    reply(ack, { ok: true });
  });
  socket.on("message:send", (payload, ack) => {
    const team = payload?.team;
    if (typeof team !== "string") return reply(ack, { ok: false, error: "team" });
    // Everyone in the room but the sender, on every server (the adapter forwards it).
    socket.to(team).emit("message:new", payload);
    reply(ack, { ok: true });
  });
});

/** Acks when the client asked for one (an emit with an ack id). */
function reply(ack, answer) {
  if (typeof ack === "function") ack(answer);
}

server.listen(port, "127.0.0.1", () => console.log("listening"));

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
