/** Refresh this long before `exp` at the latest… */
const REFRESH_BEFORE_EXP_MS = 60_000;
/** …but not before this share of the token's lifetime, so short tokens do not loop. */
const REFRESH_AT_LIFETIME = 0.8;
/** setTimeout cannot wait longer. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Claims {
  exp?: number;
  iat?: number;
}

/** The JWT's payload, decoded without verification (the gateway verifies). */
export function decodeJwtPayload(token: string): Claims | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims === "object" && claims !== null ? claims : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How long to wait before refreshing `token`, obtained at `obtainedAt` (ms): until 60 s
 * before `exp`, but at least 80% of its lifetime (from `iat`, else from when we got it).
 * Undefined when the token has no `exp`.
 */
export function refreshDelayMs(token: string, obtainedAt: number, now: number): number | undefined {
  const claims = decodeJwtPayload(token);
  if (typeof claims?.exp !== "number") return undefined;
  const expMs = claims.exp * 1000;
  const issuedMs = typeof claims.iat === "number" ? claims.iat * 1000 : obtainedAt;
  const at = Math.max(expMs - REFRESH_BEFORE_EXP_MS, issuedMs + REFRESH_AT_LIFETIME * (expMs - issuedMs));
  return Math.min(MAX_TIMER_MS, Math.max(1_000, at - now));
}

/** Whether the token is past its `exp` (or will be within `marginMs`). */
export function isExpired(token: string, now: number, marginMs = 0): boolean {
  const exp = decodeJwtPayload(token)?.exp;
  return typeof exp === "number" && exp * 1000 <= now + marginMs;
}
