import { TeamchatError } from "./errors.js";
import type { HistoryPage, HistoryQuery, TeamUnread } from "./types.js";

/** The HTTP base of a gateway's WebSocket URL: ws→http, wss→https, path dropped. */
export function httpBaseOf(wsUrl: string): string {
  const url = new URL(wsUrl);
  const protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  return `${protocol}//${url.host}`;
}

/** `GET {base}/v1/teams/{team}/messages`: a page of the team's messages; with `replyTo`,
 * `…/messages/{replyTo}/replies`: a thread's replies, oldest first. */
export async function fetchHistory(
  base: string,
  team: string,
  token: string,
  query: HistoryQuery = {},
  replyTo?: number,
): Promise<HistoryPage> {
  const params = new URLSearchParams();
  for (const key of ["before", "after", "limit"] as const) {
    const value = query[key];
    if (value !== undefined) params.set(key, String(value));
  }
  if (query.topLevel) params.set("top_level", "true");
  const search = params.toString() ? `?${params}` : "";
  const thread = replyTo === undefined ? "" : `/${replyTo}/replies`;
  const url = `${base.replace(/\/+$/, "")}/v1/teams/${encodeURIComponent(team)}/messages${thread}${search}`;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    const body = (await response.json().catch(() => undefined)) as { code?: string; message?: string } | undefined;
    throw new TeamchatError(body?.code ?? "http", body?.message ?? `history answered HTTP ${response.status}`, {
      team,
      status: response.status,
    });
  }
  return (await response.json()) as HistoryPage;
}

/** `GET {base}/v1/teams/{team}/pins`: the pinned messages, most recently pinned first. */
export async function fetchPins(base: string, team: string, token: string): Promise<HistoryPage> {
  const url = `${base.replace(/\/+$/, "")}/v1/teams/${encodeURIComponent(team)}/pins`;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    const body = (await response.json().catch(() => undefined)) as { code?: string; message?: string } | undefined;
    throw new TeamchatError(body?.code ?? "http", body?.message ?? `pins answered HTTP ${response.status}`, {
      team,
      status: response.status,
    });
  }
  const { messages } = (await response.json()) as { messages: HistoryPage["messages"] };
  return { messages, has_more: false };
}

/** `GET {base}/v1/me/unread`: the user's unread counts in every team of the token. */
export async function fetchUnread(base: string, token: string): Promise<TeamUnread[]> {
  const url = `${base.replace(/\/+$/, "")}/v1/me/unread`;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    const body = (await response.json().catch(() => undefined)) as { code?: string; message?: string } | undefined;
    throw new TeamchatError(body?.code ?? "http", body?.message ?? `unread answered HTTP ${response.status}`, {
      status: response.status,
    });
  }
  return ((await response.json()) as { teams: TeamUnread[] }).teams;
}
