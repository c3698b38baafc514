// A real teamchat stack for integration tests: one worker (it applies the migrations) and
// N gateways on free ports, sharing the running Redis and PostgreSQL under a random Redis
// prefix. Binaries come from $TEAMCHAT_BIN_DIR (default <repo>/target/debug); their
// output goes to clients/js/test-results/<prefix>/.
//
// PostgreSQL is shared between runs and not isolated by the prefix: give teams names that
// include `stack.prefix` so that history never mixes runs.
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdirSync, openSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { deleteKeys } from "./redis.js";

export interface Gateway {
  port: number;
  httpUrl: string;
  wsUrl: string;
  /** Sends the signal (default SIGTERM: a graceful drain) and resolves once the process exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** (Re)starts on the same port; resolves when GET /readyz answers 200. */
  start(): Promise<void>;
}

export interface Stack {
  gateways: Gateway[];
  secret: string;
  prefix: string;
  redisUrl: string;
  databaseUrl: string;
  /** An HS256 JWT for the stack's gateways (claims sub, name, teams, exp). */
  token(user: string, teams: string[], ttlS?: number, name?: string): string;
  /** Kills every process and deletes the prefix's Redis keys. */
  stop(): Promise<void>;
}

export interface StackOptions {
  gateways?: number;
  /** Sets DEV_MODE=true on the gateways (demo page and token endpoint). */
  dev?: boolean;
  /** Extra environment for the worker and the gateways (overrides the test defaults). */
  env?: Record<string, string>;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "../../../..");
const binDir = process.env.TEAMCHAT_BIN_DIR ?? path.join(repoRoot, "target/debug");
const resultsDir = path.resolve(here, "../../test-results");
const READY_TIMEOUT_MS = 30_000;

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
  const databaseUrl =
    process.env.DATABASE_URL ?? "postgres://teamchat:teamchat@127.0.0.1:5432/teamchat";
  const prefix = `tcjs${randomBytes(5).toString("hex")}`;
  const secret = randomBytes(24).toString("hex");
  const logDir = path.join(resultsDir, prefix);
  mkdirSync(logDir, { recursive: true });
  const common = { REDIS_URL: redisUrl, REDIS_PREFIX: prefix, DATABASE_URL: databaseUrl };

  const workerPort = await freePort();
  const worker = new Service(
    "teamchat-worker",
    path.join(logDir, "worker.log"),
    { ...common, WORKER_LISTEN: `127.0.0.1:${workerPort}`, WORKER_NAME: `${prefix}-w1`, ...opts.env },
    `http://127.0.0.1:${workerPort}/readyz`,
  );
  const gateways: Service[] = [];
  try {
    // Gateways read the tables the worker's migrations create.
    await worker.start();
    for (let i = 0; i < (opts.gateways ?? 1); i++) {
      const port = await freePort();
      const env = {
        ...common,
        LISTEN: `127.0.0.1:${port}`,
        JWT_SECRET: secret,
        RATE_SEND_PER_MIN: "1000000",
        RATE_TYPING_PER_MIN: "1000000",
        RATE_JOIN_PER_MIN: "1000000",
        MAX_CONNECTIONS_PER_USER: "1000",
        PRESENCE_TTL_MS: "3000",
        DRAIN_GRACE_MS: "1000",
        ...(opts.dev ? { DEV_MODE: "true", DEV_CLIENTS_DIR: path.join(repoRoot, "clients") } : {}),
        ...opts.env,
      };
      gateways.push(
        new Service("teamchat-gateway", path.join(logDir, `gateway-${i}.log`), env, `http://127.0.0.1:${port}/readyz`, port),
      );
    }
    await Promise.all(gateways.map((g) => g.start()));
  } catch (e) {
    await Promise.all([worker, ...gateways].map((s) => s.kill("SIGKILL")));
    throw e;
  }

  return {
    gateways: gateways.map((service) => ({
      port: service.port,
      httpUrl: `http://127.0.0.1:${service.port}`,
      wsUrl: `ws://127.0.0.1:${service.port}/ws`,
      kill: (signal) => service.kill(signal),
      start: () => service.start(),
    })),
    secret,
    prefix,
    redisUrl,
    databaseUrl,
    token: (user, teams, ttlS = 3600, name) =>
      signToken(secret, { sub: user, name, teams, exp: Math.floor(Date.now() / 1000) + ttlS }),
    async stop() {
      await Promise.all([...gateways, worker].map((s) => s.kill("SIGKILL")));
      await deleteKeys(redisUrl, `${prefix}:*`);
    },
  };
}

/** Signs claims as an HS256 JWT. */
export function signToken(secret: string, claims: Record<string, unknown>): string {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  const signature = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/** One binary, restartable with the same environment (so the same port). */
class Service {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    private readonly binary: string,
    private readonly logFile: string,
    private readonly env: Record<string, string>,
    private readonly readyUrl: string,
    readonly port = 0,
  ) {}

  async start(): Promise<void> {
    if (this.child) return;
    const log = openSync(this.logFile, "a");
    const child = spawn(path.join(binDir, this.binary), [], {
      env: { ...process.env, ...this.env },
      stdio: ["ignore", log, log],
    });
    closeSync(log);
    this.child = child;
    let exitCode: number | null | undefined;
    this.exited = new Promise((resolve) => {
      const done = (code: number | null) => {
        exitCode = code;
        if (this.child === child) this.child = undefined;
        resolve();
      };
      child.once("exit", done);
      child.once("error", () => done(null));
    });
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exitCode !== undefined) {
        throw new Error(`${this.binary} exited (${exitCode}) before ready; see ${this.logFile}`);
      }
      if (await isReady(this.readyUrl)) return;
      await Promise.race([this.exited, sleep(50)]);
    }
    await this.kill("SIGKILL");
    throw new Error(`${this.binary} not ready after ${READY_TIMEOUT_MS} ms; see ${this.logFile}`);
  }

  async kill(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    this.child?.kill(signal);
    await this.exited;
  }
}

async function isReady(url: string): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await response.body?.cancel();
    return response.status === 200;
  } catch {
    return false;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
