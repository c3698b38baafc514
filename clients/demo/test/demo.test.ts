// The demo page in headless Chromium against two real gateways (DEV_MODE): typing, live
// messages, lazy history, read receipts, a gateway killed and restarted under a page,
// reactions, threads and unread badges, the backend's notices and the HTTP fallbacks.
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
import { startStack } from "../../js/test/support/stack.ts";

const SHOTS = join(dirname(fileURLToPath(import.meta.url)), "../test-results");
const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const WAIT = { timeout: 60_000 };
const SEEDED = 120;

const API_KEY = "an-api-key-for-the-demo-test-0123456789abcdef";

/** A call to the server API of a gateway, as the application's backend makes it. */
async function serverApi(httpUrl: string, method: string, path: string, body?: object) {
  const res = await fetch(`${httpUrl}/v1/server/${path}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  expect(res.status).toBe(200);
}

const CLIENTS = join(dirname(fileURLToPath(import.meta.url)), "../..");

let stack: Awaited<ReturnType<typeof startStack>>;
let TEAM: string; // PostgreSQL is shared between runs: the team is unique to this one
let browser: Browser;
const pageErrors: string[] = [];

beforeAll(async () => {
  for (const [file, hint] of [
    [CHROMIUM, "apt-get install chromium"],
    [join(CLIENTS, "js/dist/index.js"), "cd clients/js && npm ci && npm run build"],
  ]) {
    if (!existsSync(file)) throw new Error(`${file} is missing: ${hint}`);
  }
  mkdirSync(SHOTS, { recursive: true });
  // With permessage-deflate on, as a deployment that enables it: every page below chats
  // over it, and the last test checks Chromium negotiated it.
  stack = await startStack({ gateways: 2, dev: true, env: { API_KEYS: API_KEY, WS_DEFLATE: "true" } });
  TEAM = `demo-${stack.prefix}`;
  // Playwright gives the browser a fresh temporary --user-data-dir of its own.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

afterAll(async () => {
  await browser?.close();
  await stack?.stop();
});

async function openPage(httpUrl: string, label: string): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 960, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
  await page.goto(httpUrl);
  return page;
}

const shot = (page: Page, name: string) => page.screenshot({ path: join(SHOTS, `${name}.png`) });
const message = (page: Page, seq: number) => page.locator(`[data-testid=message][data-seq="${seq}"]`);
const state = (page: Page, s: string) => page.locator(`[data-testid=conn-state][data-state="${s}"]`).waitFor(WAIT);
const seqs = (page: Page) =>
  page.locator("[data-testid=message][data-seq]").evaluateAll((els) => els.map((el) => Number((el as HTMLElement).dataset.seq)));
const bodies = (page: Page) => page.locator("[data-testid=message] .body").allTextContents();

async function enterRoom(page: Page, name: string) {
  await page.getByTestId("name-input").fill(name);
  await page.getByTestId("team-input").fill(TEAM);
  await page.getByTestId("join-button").click();
  await state(page, "open");
}

async function send(page: Page, body: string) {
  await page.getByTestId("composer").fill(body);
  await page.getByTestId("send-button").click();
}

/** Earlier messages, sent over raw WebSockets from the page by a few users (each within its
 *  send burst), one after another so their seqs are 1..count in order. */
async function seed(page: Page, count: number) {
  await page.evaluate(async ({ team, count }) => {
    const perUser = 20;
    for (let u = 0; u * perUser < count; u++) {
      const user = `seed${u}`;
      const res = await fetch("/dev/token", { method: "POST", body: JSON.stringify({ user, teams: [team] }) });
      const { token } = await res.json();
      const ws = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
      const replies: Record<string, (f: any) => void> = {};
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.rid) replies[f.rid]?.(f);
      };
      const request = (frame: object, rid: string) =>
        new Promise<any>((resolve) => {
          replies[rid] = resolve;
          ws.send(JSON.stringify({ ...frame, rid }));
        });
      await new Promise((resolve, reject) => ((ws.onopen = resolve), (ws.onerror = reject)));
      await request({ type: "room:join", team }, "join");
      for (let i = 0; i < perUser && u * perUser + i < count; i++) {
        const n = u * perUser + i + 1;
        const ack = await request({ type: "message:send", team, client_id: `seed-${n}`, body: `seed message ${n}` }, `m${n}`);
        if (ack.type !== "message:ack" || ack.seq !== n) throw new Error(`seed ${n}: ${JSON.stringify(ack)}`);
      }
      ws.close();
    }
  }, { team: TEAM, count });
}

test("two pages on two gateways chat through typing, history, receipts and a gateway restart", async () => {
  const [g1, g2] = stack.gateways;
  const a = await openPage(g1.httpUrl, "A");
  const b = await openPage(g2.httpUrl, "B");
  await shot(a, "01-login");

  await seed(a, SEEDED);
  await enterRoom(a, "Alice");
  await enterRoom(b, "Bob");
  for (const page of [a, b]) {
    for (const user of ["alice", "bob"]) await page.locator(`[data-testid=online-list] [data-user=${user}]`).waitFor(WAIT);
  }
  // The newest page of history, oldest above, scrolled to the bottom.
  await message(b, SEEDED).waitFor(WAIT);
  expect(await seqs(b)).toEqual(Array.from({ length: 50 }, (_, i) => SEEDED - 49 + i));
  await shot(b, "02-joined-B");

  // A types: B sees it.
  await a.getByTestId("composer").pressSequentially("hello", { delay: 20 });
  await b.getByTestId("typing").filter({ hasText: "Alice is typing…" }).waitFor(WAIT);
  await shot(b, "03-typing-B");

  // A sends: pending, then acked; B gets it live and the typing line clears.
  await a.getByTestId("send-button").click();
  await message(a, SEEDED + 1).waitFor(WAIT);
  await expect.poll(() => a.locator("[data-state=pending]").count(), WAIT).toBe(0);
  await message(b, SEEDED + 1).filter({ hasText: "hello" }).waitFor(WAIT);
  await expect.poll(() => b.getByTestId("typing").textContent(), WAIT).toBe("");
  await shot(a, "04-sent-A");
  await shot(b, "04-received-B");

  // B has read it (its window is focused and the message is on screen): A sees the receipt.
  await message(a, SEEDED + 1).locator("[data-testid=receipt][data-users~=bob]").waitFor(WAIT);
  await shot(a, "05-receipt-A");

  // B scrolls up: older pages load, keeping what B looked at in place, down to seq 1.
  const scroller = b.getByTestId("messages");
  while ((await message(b, 1).count()) === 0) {
    const [oldest] = await seqs(b);
    await scroller.evaluate((el) => (el.scrollTop = 0));
    await message(b, oldest - 1).waitFor(WAIT);
    // The message that was at the top is still in view (the scroll position was kept).
    await expect.poll(() => message(b, oldest).evaluate((el) => {
      const box = el.getBoundingClientRect(), view = el.closest("[data-testid=messages]")!.getBoundingClientRect();
      return box.bottom > view.top && box.top < view.bottom;
    }), WAIT).toBe(true);
  }
  expect(await seqs(b)).toEqual(Array.from({ length: SEEDED + 1 }, (_, i) => i + 1));
  await shot(b, "06-history-B");
  await scroller.evaluate((el) => (el.scrollTop = el.scrollHeight));

  // A's gateway dies: A reconnects; what A sends meanwhile is sent once it is back.
  await g1.kill("SIGKILL");
  await state(a, "reconnecting");
  await send(a, "while down 1");
  await send(a, "while down 2");
  await expect.poll(() => a.locator("[data-state=pending]").count(), WAIT).toBe(2);
  await shot(a, "07-reconnecting-A");

  await g1.start();
  await state(a, "open");
  await expect.poll(() => a.locator("[data-state=pending]").count(), WAIT).toBe(0);
  await send(a, "after restart 1");
  await send(a, "after restart 2");
  const sent = ["while down 1", "while down 2", "after restart 1", "after restart 2"];
  for (const [i, body] of sent.entries()) {
    await message(b, SEEDED + 2 + i).filter({ hasText: body }).waitFor(WAIT);
  }
  await expect.poll(() => a.locator("[data-state=pending]").count(), WAIT).toBe(0);
  await shot(a, "08-after-restart-A");
  await shot(b, "08-after-restart-B");

  // Exactly once, in order, on both pages.
  const all = Array.from({ length: SEEDED + 5 }, (_, i) => i + 1);
  expect(await seqs(b)).toEqual(all);
  for (const body of ["hello", ...sent]) {
    expect((await bodies(b)).filter((t) => t === body)).toHaveLength(1);
    expect((await bodies(a)).filter((t) => t === body)).toHaveLength(1);
  }
  expect((await seqs(a)).slice(-5)).toEqual(all.slice(-5));
  expect(pageErrors).toEqual([]);
});

test("reactions, a thread and unread badges across two teams", async () => {
  const [g1, g2] = stack.gateways;
  const [main, side] = [`${TEAM}-main`, `${TEAM}-side`];
  const enter = async (page: Page, name: string) => {
    await page.getByTestId("name-input").fill(name);
    await page.getByTestId("team-input").fill(`${main}, ${side}`);
    await page.getByTestId("join-button").click();
    await state(page, "open");
  };
  const gina = await openPage(g1.httpUrl, "G");
  const hal = await openPage(g2.httpUrl, "H");
  await enter(gina, "Gina");
  await enter(hal, "Hal");
  const chip = (page: Page, seq: number, emoji: string) =>
    message(page, seq).locator(`[data-testid=reaction][data-emoji="${emoji}"]`);
  const badge = (page: Page, team: string) => page.locator(`[data-testid=team][data-team="${team}"] [data-testid=unread]`);

  await send(gina, "ship it?");
  await message(hal, 1).filter({ hasText: "ship it?" }).waitFor(WAIT);
  // Hal reacts from the palette; Gina sees it, then adds hers to it.
  await message(hal, 1).getByTestId("react-button").click();
  await message(hal, 1).locator("[data-testid=react-option][data-emoji='👍']").click();
  await chip(gina, 1, "👍").and(gina.locator("[data-count='1'][aria-pressed=false]")).waitFor(WAIT);
  await chip(hal, 1, "👍").and(hal.locator("[aria-pressed=true]")).waitFor(WAIT);
  await chip(gina, 1, "👍").click();
  for (const page of [gina, hal]) await chip(page, 1, "👍").and(page.locator("[data-count='2']")).waitFor(WAIT);

  // Hal answers in a thread: Gina sees the count, opens it and reads the reply.
  await message(hal, 1).getByTestId("thread-link").click();
  await hal.getByTestId("thread-composer").fill("yes, shipping");
  await hal.getByTestId("thread-send").click();
  await message(gina, 1).locator("[data-testid=thread-link][data-count='1']").waitFor(WAIT);
  await message(gina, 1).getByTestId("thread-link").click();
  await gina.getByTestId("thread").locator("[data-testid=reply]", { hasText: "yes, shipping" }).waitFor(WAIT);
  // The reply is in the thread, not in the team's list.
  expect(await seqs(gina)).toEqual([1]);
  await shot(gina, "12-reactions-thread-G");

  // Hal posts in the other team: Gina's badge counts it until she opens that team.
  await hal.locator(`[data-testid=team][data-team="${side}"]`).click();
  await send(hal, "over here");
  await message(hal, 1).filter({ hasText: "over here" }).waitFor(WAIT);
  await badge(gina, side).and(gina.locator("[data-count='1']")).waitFor(WAIT);
  expect(await badge(gina, main).getAttribute("data-count")).toBe("0");
  await shot(gina, "13-unread-G");
  await gina.locator(`[data-testid=team][data-team="${side}"]`).click();
  await message(gina, 1).filter({ hasText: "over here" }).waitFor(WAIT);
  // (A zero badge is hidden.)
  await expect.poll(() => badge(gina, side).getAttribute("data-count"), WAIT).toBe("0");

  // A new page of Gina's reads it all back from history once the worker synced it.
  const again = await openPage(g2.httpUrl, "G2");
  await enter(again, "Gina");
  await message(again, 1).filter({ hasText: "ship it?" }).waitFor(WAIT);
  await expect
    .poll(async () => {
      await again.reload();
      await enter(again, "Gina");
      await message(again, 1).waitFor(WAIT);
      return [
        await chip(again, 1, "👍").getAttribute("data-count"),
        await chip(again, 1, "👍").getAttribute("aria-pressed"),
        await message(again, 1).getByTestId("thread-link").getAttribute("data-count"),
      ];
    }, WAIT)
    .toEqual(["2", "true", "1"]);
  expect(pageErrors).toEqual([]);
});

test("a page shows what the backend notifies, and a removal from the team", async () => {
  const [g1, g2] = stack.gateways;
  const page = await openPage(g2.httpUrl, "C");
  await enterRoom(page, "Carol");
  await serverApi(g1.httpUrl, "POST", "users/carol/notify", { data: { unread: 3, team: "elsewhere" } });
  const notified = async () => (await page.getByTestId("notification").allTextContents()).map((text) => JSON.parse(text));
  await expect.poll(notified, WAIT).toEqual([{ unread: 3, team: "elsewhere" }]);

  await serverApi(g1.httpUrl, "DELETE", `teams/${TEAM}/members/carol`);
  await page.getByTestId("removed").filter({ hasText: "no longer in" }).waitFor(WAIT);
  expect(await page.getByTestId("composer").isDisabled()).toBe(true);
  await shot(page, "09-removed-C");
  expect(pageErrors).toEqual([]);
});

test("with WebSocket blocked a page chats over SSE, then over long-polling, losing nothing", async () => {
  const [g1, g2] = stack.gateways;
  const team = `${TEAM}-fallback`;
  const enter = async (page: Page, name: string) => {
    await page.getByTestId("name-input").fill(name);
    await page.getByTestId("team-input").fill(team);
    await page.getByTestId("join-button").click();
    await state(page, "open");
  };
  const transport = (page: Page) => page.getByTestId("transport").getAttribute("data-transport");
  const other = await openPage(g1.httpUrl, "E");
  await enter(other, "Erin");

  // A proxy that breaks every WebSocket upgrade of this page.
  const blocked = await openPage(g2.httpUrl, "D");
  await blocked.routeWebSocket(/\/ws/, (ws) => ws.close({ code: 1002, reason: "blocked by a proxy" }));
  await enter(blocked, "Dan");
  expect(await transport(blocked)).toBe("sse");
  await send(blocked, "over sse");
  await other.locator("[data-testid=message] .body", { hasText: "over sse" }).waitFor(WAIT);
  await send(other, "to sse");
  await blocked.locator("[data-testid=message] .body", { hasText: "to sse" }).waitFor(WAIT);
  await shot(blocked, "10-sse-D");

  // The gateway restarts under the stream: the page reconnects and misses nothing.
  await g2.kill("SIGKILL");
  await send(other, "while restarting");
  await g2.start();
  await blocked.locator("[data-testid=message] .body", { hasText: "while restarting" }).waitFor(WAIT);

  // Streaming is broken too: long-polling.
  const polling = await openPage(g2.httpUrl, "F");
  await polling.routeWebSocket(/\/ws/, (ws) => ws.close({ code: 1002, reason: "blocked by a proxy" }));
  await polling.route("**/v1/events*", (route) => route.abort());
  await enter(polling, "Fay");
  expect(await transport(polling)).toBe("polling");
  await send(polling, "over polling");
  await other.locator("[data-testid=message] .body", { hasText: "over polling" }).waitFor(WAIT);
  await blocked.locator("[data-testid=message] .body", { hasText: "over polling" }).waitFor(WAIT);
  await send(other, "to polling");
  await polling.locator("[data-testid=message] .body", { hasText: "to polling" }).waitFor(WAIT);
  await shot(polling, "11-polling-F");

  for (const page of [blocked, polling, other]) {
    for (const body of ["over sse", "to sse", "while restarting", "over polling", "to polling"]) {
      if (page === polling && ["over sse", "to sse", "while restarting"].includes(body)) continue;
      expect((await bodies(page)).filter((t) => t === body), body).toHaveLength(1);
    }
  }
  expect(pageErrors).toEqual([]);
});

test("Chromium negotiates permessage-deflate and large messages arrive intact", async () => {
  const page = await openPage(stack.gateways[0].httpUrl, "Z");
  const result = await page.evaluate(async ({ team }) => {
    const open = async (user: string) => {
      const res = await fetch("/dev/token", { method: "POST", body: JSON.stringify({ user, teams: [team] }) });
      const { token } = await res.json();
      const ws = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
      const frames: any[] = [];
      let arrived = () => {};
      ws.onmessage = (e) => {
        frames.push(JSON.parse(e.data));
        arrived();
      };
      await new Promise((resolve, reject) => ((ws.onopen = resolve), (ws.onerror = reject)));
      const next = (match: (f: any) => boolean) =>
        new Promise<any>((resolve) => {
          const look = () => {
            const found = frames.find(match);
            if (found) resolve(found);
          };
          arrived = look;
          look();
        });
      ws.send(JSON.stringify({ type: "room:join", team }));
      await next((f) => f.type === "room:joined");
      return { ws, next };
    };
    const sender = await open("deflate-sender");
    const receiver = await open("deflate-receiver");
    // 12 KiB of text, as a long pasted message.
    const words = ["release", "review", "deploy", "rollback", "incident", "schedule", "owner", "notes"];
    const body = Array.from({ length: 1_500 }, (_, i) => words[(i * 7) % words.length]).join(" ");
    sender.ws.send(JSON.stringify({ type: "message:send", team, client_id: "deflate-big", body }));
    const received = await receiver.next((f) => f.type === "message:new" && f.client_id === "deflate-big");
    return { extensions: [sender.ws.extensions, receiver.ws.extensions], intact: received.body === body, length: body.length };
  }, { team: TEAM });
  const answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
  expect(result.extensions).toEqual([answer, answer]);
  expect(result.length).toBeGreaterThan(10_000);
  expect(result.intact).toBe(true);
  expect(pageErrors).toEqual([]);
});
