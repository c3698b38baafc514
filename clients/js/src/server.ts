/// <reference types="node" />
// The application backend's side, for Node: signs users' tokens and calls the gateway's
// server API (docs/server-api.md). Import it from "teamchat-client/server" on a server
// only: it holds the API key and the signing key.
import { createHmac, createPrivateKey, sign, type KeyObject } from "node:crypto";
import type { HistoryPage, HistoryQuery, Meta, PresenceInfo } from "./types.js";

export type TokenAlgorithm = "HS256" | "RS256" | "ES256" | "EdDSA";

/** The claims of a user's token (docs/protocol.md, Token); `iat` and `exp` are set by `signToken`. */
export interface TokenClaims {
  sub: string;
  teams: string[];
  name?: string;
  role?: "member" | "staff";
  credit_limit?: number;
  iss?: string;
  aud?: string | string[];
  [claim: string]: unknown;
}

export interface SignOptions {
  /** HS256 (the default) signs with a shared secret; the others with a private key. */
  algorithm?: TokenAlgorithm;
  /** The `JWT_SECRET` for HS256; a PEM private key (or KeyObject) otherwise. */
  key: string | KeyObject;
  /** Lifetime in seconds (default one hour); keep it under the gateway's `MAX_TOKEN_TTL_S`. */
  ttlS?: number;
  /** `kid` of the header, for a gateway verifying with a JWKS document. */
  kid?: string;
}

const base64url = (data: string | Buffer): string => Buffer.from(data).toString("base64url");

/**
 * A signed token for a user. `iat` keeps the fraction of the second, so a token issued
 * right after a revocation or a removal is told apart from those before it.
 */
export function signToken(claims: TokenClaims, options: SignOptions): string {
  const algorithm = options.algorithm ?? "HS256";
  const issuedAt = Date.now() / 1000;
  const header = { alg: algorithm, typ: "JWT", ...(options.kid ? { kid: options.kid } : {}) };
  const payload = { ...claims, iat: issuedAt, exp: Math.floor(issuedAt) + (options.ttlS ?? 3600) };
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(payload))}`;
  let signature: Buffer;
  if (algorithm === "HS256") {
    if (typeof options.key !== "string") throw new TypeError("HS256 signs with a secret string");
    signature = createHmac("sha256", options.key).update(input).digest();
  } else {
    const key = typeof options.key === "string" ? createPrivateKey(options.key) : options.key;
    signature =
      algorithm === "EdDSA"
        ? sign(null, Buffer.from(input), key)
        : // ES256 signatures are r‖s (JWS), not DER.
          sign("sha256", Buffer.from(input), algorithm === "ES256" ? { key, dsaEncoding: "ieee-p1363" } : key);
  }
  return `${input}.${base64url(signature)}`;
}

export interface ServerOptions {
  /** The gateway's HTTP base: its LISTEN, or API_LISTEN when set (e.g. http://10.0.0.5:8081). */
  url: string;
  /** One of the gateway's API_KEYS. */
  apiKey: string;
  /** fetch to use (default globalThis.fetch). */
  fetch?: typeof fetch;
}

/** The ack of a posted message. */
export interface PostAck {
  team: string;
  seq: number;
  id: string;
  offset: string;
  ts: number;
  /** A retry of an earlier post with the same `client_id`: nothing new was appended. */
  duplicate: boolean;
}

export interface Post {
  /** Who the message is from (a bot, a system user, or any user). */
  user: string;
  name?: string;
  body: string;
  meta?: Meta;
  /** Idempotency key, per user and team: a retry with the same one posts nothing new. */
  client_id: string;
  /** Charge the user's credits (default true). */
  charge?: boolean;
}

export interface TeamState {
  team: string;
  epoch: string;
  offset: string;
  seq: number;
  online: number;
}

/** An answer of the server API that is not 200: `code` is the body's (`bad_request`, `unauthorized`, …). */
export class TeamchatServerError extends Error {
  readonly status: number;
  readonly code: string;
  readonly retryAfterMs?: number;

  constructor(status: number, code: string, message: string, retryAfterMs?: number) {
    super(message);
    this.name = "TeamchatServerError";
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** The gateway's server API, one method per endpoint. */
export class TeamchatServer {
  private readonly base: string;
  private readonly fetch: typeof fetch;

  constructor(private readonly options: ServerOptions) {
    this.base = options.url.replace(/\/+$/, "");
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Posts a message to a team, as `post.user`; members get `message:new`, history has it. */
  publish(team: string, post: Post): Promise<PostAck> {
    return this.call("POST", `teams/${enc(team)}/messages`, post);
  }

  /** The same message in each team (up to 100), each idempotent on its own. */
  broadcast(teams: string[], post: Post): Promise<{ results: (PostAck | { team: string; code: string; message: string })[] }> {
    return this.call("POST", "broadcast", { teams, ...post });
  }

  /** Closes every connection of the user, on every gateway. */
  async disconnect(user: string, code: 1000 | 4001 | 4003 = 1000): Promise<void> {
    await this.call("POST", `users/${enc(user)}/disconnect`, { code });
  }

  /** Revokes the user's tokens issued before `issuedBefore` (Unix seconds; default now). */
  async revoke(user: string, issuedBefore?: number): Promise<void> {
    await this.call("POST", `users/${enc(user)}/revoke`, issuedBefore === undefined ? {} : { issued_before: issuedBefore });
  }

  /** Removes the user from the team: their tokens issued until now no longer grant it. */
  async removeMember(team: string, user: string): Promise<void> {
    await this.call("DELETE", `teams/${enc(team)}/members/${enc(user)}`);
  }

  /** Sends every connection of the user `{"type":"notify","data":…}` (≤ 4 KiB, not stored). */
  async notify(user: string, data: Record<string, unknown>): Promise<void> {
    await this.call("POST", `users/${enc(user)}/notify`, { data });
  }

  team(team: string): Promise<TeamState> {
    return this.call("GET", `teams/${enc(team)}`);
  }

  presence(team: string): Promise<{ users: ({ user: string } & PresenceInfo)[] }> {
    return this.call("GET", `teams/${enc(team)}/presence`);
  }

  history(team: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) if (value !== undefined) params.set(name, String(value));
    const search = params.size > 0 ? `?${params}` : "";
    return this.call("GET", `teams/${enc(team)}/messages${search}`);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await this.fetch(`${this.base}/v1/server/${path}`, {
      method,
      headers: {
        authorization: `Bearer ${this.options.apiKey}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (!response.ok) {
      const error = (parsed ?? {}) as { code?: string; message?: string; retry_after_ms?: number };
      throw new TeamchatServerError(response.status, error.code ?? "http", error.message ?? `HTTP ${response.status}`, error.retry_after_ms);
    }
    return parsed as T;
  }
}

const enc = encodeURIComponent;
