// The teamchat demo page: one or more teams, one shown at a time, spoken through the
// teamchat-client library: messages, typing, receipts, presence, reactions, threads and
// unread badges.
import { TeamchatClient } from "teamchat-client";

const PAGE = 50; // messages per history page
const EMOJIS = ["👍", "🎉", "👀", "❤️"]; // the palette of quick reactions
const STORE = "teamchat-demo"; // localStorage key of the last name and team

const $ = (id) => document.getElementById(id);
const login = $("login"), chat = $("chat"), badge = $("conn-state");
const scroller = $("scroller"), older = $("older"), list = $("list"), pendingList = $("pending");
const typingLine = $("typing"), composer = $("composer"), online = $("online");

let client = null; // the TeamchatClient while in a room
// { team (shown), teams, me, myName, names, receipts: team -> user -> seq, presence: team ->
//   users, typists, lastRead: team -> seq }
let room = null;
// The shown team's top-level messages: { seqs (ascending), bySeq: seq -> <li>, hasMore,
// loading, reactions: seq -> emoji -> { count, me }, replies: seq -> count }
let view = null;
let thread = null; // the open thread: { parent, seqs: Set }

/** An element with properties, data-* attributes and children. */
function h(tag, props = {}, data = {}, ...children) {
  const el = Object.assign(document.createElement(tag), props);
  Object.assign(el.dataset, data);
  el.append(...children);
  return el;
}

/** A user id the server accepts, made from a display name. */
const userId = (name) =>
  name.trim().toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 64) || "guest";

const clock = (ts) => new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const nameOf = (user) => room.names.get(user) ?? user;
const note = (text) => ($("chat-error").textContent = text);

/** Index of the first seq above `seq` in the ascending array `seqs`. */
function above(seqs, seq) {
  let lo = 0, hi = seqs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (seqs[mid] <= seq) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------- joining and leaving

const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
if (saved.name) login.username.value = saved.name;
if (saved.team) login.team.value = saved.team;

login.addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = login.username.value.trim(), team = login.team.value.trim();
  const teams = [...new Set(team.split(",").map((t) => t.trim()).filter(Boolean))];
  const user = userId(name);
  localStorage.setItem(STORE, JSON.stringify({ name, team }));
  // The library asks on every (re)connect and before the token expires.
  const getToken = async () => {
    const res = await fetch("/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user, name, teams }),
    });
    if (!res.ok) throw new Error(`token: HTTP ${res.status} ${await res.text()}`);
    return (await res.json()).token;
  };
  try {
    await getToken(); // fail here, on the form, when the gateway is not in DEV_MODE
  } catch (err) {
    $("login-error").textContent = `${err.message} (is the gateway running with DEV_MODE=true?)`;
    return;
  }
  $("login-error").textContent = "";
  enter({ user, name, teams, getToken });
});

const emptyView = () => ({ seqs: [], bySeq: new Map(), hasMore: true, loading: false, reactions: new Map(), replies: new Map() });

async function enter({ user, name, teams, getToken }) {
  const team = teams[0];
  room = {
    team, teams, me: user, myName: name, names: new Map([[user, name]]),
    receipts: new Map(), presence: new Map(), typists: new Set(), lastRead: new Map(),
  };
  view = emptyView();
  closeThread();
  login.hidden = true;
  chat.hidden = $("switch").hidden = false;
  $("room-title").textContent = `#${team} · ${name}`;
  list.replaceChildren();
  pendingList.replaceChildren();
  renderTeams();
  $("notices").replaceChildren();
  $("notices").hidden = $("removed").hidden = true;
  composer.body.disabled = composer.querySelector("button").disabled = false;

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  client = new TeamchatClient({ url: `${scheme}://${location.host}/ws`, httpUrl: location.origin, getToken });
  // Events of the shown team (and of none); the others are kept per team below.
  const on = (event, handler) => client.on(event, (f) => (f?.team === undefined || f.team === room?.team) && handler(f));
  on("state", showState);
  on("transport", showTransport);
  showTransport(client.transport);
  on("message", onMessage);
  on("edit", (f) => change(f.seq, { body: f.body }));
  on("delete", (f) => change(f.seq, { deleted: true }));
  on("typing", ({ user, typing }) => {
    typing ? room.typists.add(user) : room.typists.delete(user);
    renderTyping();
  });
  client.on("receipt", ({ team, user, seq }) => {
    const receipts = receiptsOf(team);
    receipts.set(user, Math.max(seq, receipts.get(user) ?? 0));
    if (team === room?.team) renderReceipts();
  });
  client.on("receipts", ({ team, receipts }) => {
    if (!room) return;
    room.receipts.set(team, new Map(receipts.map((r) => [r.user, r.seq])));
    room.lastRead.set(team, Math.max(room.lastRead.get(team) ?? 0, receiptsOf(team).get(room.me) ?? 0));
    if (team === room.team) renderReceipts();
  });
  client.on("presence", ({ team, users }) => {
    if (!room) return;
    room.presence.set(team, users);
    if (team === room.team) renderOnline(users);
  });
  on("reaction", ({ seq, user, emoji, type }) => react(seq, emoji, user === room.me, type === "reaction:added" ? 1 : -1));
  client.on("unread", renderTeams);
  on("reset", () => {
    // The server could not replay what we missed: start the list again from the newest page.
    view = emptyView();
    list.replaceChildren();
    loadPage();
  });
  on("left", ({ reason }) => {
    // The backend took us out of the team: no more of its events, no rejoin, no sending.
    $("removed").hidden = false;
    $("removed").textContent = `You are no longer in #${room.team} (${reason}).`;
    composer.body.disabled = composer.querySelector("button").disabled = true;
    online.replaceChildren();
  });
  on("notify", ({ data }) => {
    // Shown as text: the data comes from the backend, but is never markup.
    const item = h("li", { textContent: JSON.stringify(data) }, { testid: "notification" });
    $("notices").prepend(item);
    $("notices").hidden = false;
  });
  on("error", (err) => note(`error: ${err.code ?? ""} ${err.message ?? err}`));
  on("close", ({ code, reason }) => code !== 1000 && note(`disconnected (${code}${reason ? `: ${reason}` : ""})`));

  showState(client.state);
  client.connect();
  // Every team is joined, so each one's unread badge stays live; one is shown.
  const joined = await Promise.allSettled(teams.map((t) => client.join(t)));
  const refused = joined.findIndex((j) => j.status === "rejected");
  if (refused >= 0) {
    const err = joined[refused].reason;
    note(`could not join #${teams[refused]}: ${err.code ?? ""} ${err.message ?? err}`);
    if (refused === 0) return;
  }
  loadPage();
  client.unread().then(renderTeams, (err) => note(`unread: ${err.message ?? err}`));
  composer.body.focus();
}

/** Shows another of the joined teams. */
function showTeam(team) {
  if (!room || team === room.team) return;
  room.team = team;
  room.typists.clear();
  view = emptyView();
  closeThread();
  $("room-title").textContent = `#${team} · ${room.myName}`;
  list.replaceChildren();
  pendingList.replaceChildren();
  renderTyping();
  renderOnline(room.presence.get(team) ?? new Map());
  renderTeams();
  loadPage();
}

const receiptsOf = (team) => {
  if (!room.receipts.has(team)) room.receipts.set(team, new Map());
  return room.receipts.get(team);
};

/** The team list, each with its unread badge (red when the unread ones mention us). */
function renderTeams() {
  if (!room) return;
  $("teams").replaceChildren(...room.teams.map((team) => {
    const counts = client?.unreadCounts(team);
    const count = counts?.unread ?? 0;
    const badge = h("span", { className: "unread", textContent: String(count) }, { testid: "unread", count: String(count) });
    badge.classList.toggle("mentioned", (counts?.mentions ?? 0) > 0);
    const li = h("li", { className: team === room.team ? "current" : "" }, { testid: "team", team }, team, badge);
    li.addEventListener("click", () => showTeam(team));
    return li;
  }));
}

$("switch").addEventListener("click", () => {
  client?.close();
  closeThread();
  client = room = view = null;
  chat.hidden = $("switch").hidden = true;
  login.hidden = false;
  $("room-title").textContent = "";
  showState("idle");
  showTransport("");
});

function showTransport(transport) {
  $("transport").textContent = $("transport").dataset.transport = transport;
}

function showState(state) {
  badge.textContent = badge.dataset.state = state;
  if (state === "open") note("");
  if (state !== "open" && room) {
    room.typists.clear(); // the server stops them for us; we may not hear it while away
    renderTyping();
  }
}

// ---------------------------------------------------------------- messages

function messageEl(m) {
  const li = h("li", { className: "msg" }, { testid: "message", user: m.user },
    h("div", { className: "head" }, {}, h("b", { textContent: m.name || m.user }), " ", h("time")),
    h("div", { className: "body" }),
  );
  li.classList.toggle("mine", m.user === room.me);
  if (m.seq) li.dataset.seq = m.seq;
  li.querySelector("time").textContent = m.ts ? clock(m.ts) : "sending…";
  fill(li, m);
  return li;
}

/** A top-level message's reactions, reaction palette and thread link. */
function decorate(li, m) {
  const reactions = new Map((m.reactions ?? []).map((r) => [r.emoji, { count: r.count, me: r.me }]));
  view.reactions.set(m.seq, reactions);
  view.replies.set(m.seq, m.reply_count ?? 0);
  const palette = h("span", { className: "palette" }, {}, ...EMOJIS.map((emoji) => {
    const b = h("button", { type: "button", className: "link", textContent: emoji }, { testid: "react-option", emoji });
    b.addEventListener("click", () => toggleReaction(m.seq, emoji));
    return b;
  }));
  palette.hidden = true;
  const open = h("button", { type: "button", className: "link", textContent: "☺+", title: "react" }, { testid: "react-button" });
  open.addEventListener("click", () => (palette.hidden = !palette.hidden));
  const replies = h("button", { type: "button", className: "link" }, { testid: "thread-link" });
  replies.addEventListener("click", () => openThread(m.seq));
  li.append(h("div", { className: "reactions" }, {}), h("div", {}, {}, replies, " ", open, " ", palette));
  renderReactions(m.seq);
  renderReplies(m.seq);
}

function renderReactions(seq) {
  const li = view.bySeq.get(seq);
  if (!li) return;
  li.querySelector(".reactions").replaceChildren(...[...view.reactions.get(seq)].map(([emoji, { count, me }]) => {
    const chip = h("button", { type: "button", textContent: `${emoji} ${count}` },
      { testid: "reaction", emoji, count: String(count) });
    chip.setAttribute("aria-pressed", String(me));
    chip.addEventListener("click", () => toggleReaction(seq, emoji));
    return chip;
  }));
}

function renderReplies(seq) {
  const n = view.replies.get(seq) ?? 0;
  const link = view.bySeq.get(seq)?.querySelector("[data-testid=thread-link]");
  if (!link) return;
  link.textContent = n === 0 ? "reply" : n === 1 ? "1 reply" : `${n} replies`;
  link.dataset.count = String(n);
}

/** A reaction added (+1) or removed (-1) on a shown message, by us (`mine`) or another. */
function react(seq, emoji, mine, delta) {
  const reactions = view?.reactions.get(seq);
  if (!reactions) return;
  const r = reactions.get(emoji) ?? { count: 0, me: false };
  r.count += delta;
  if (mine) r.me = delta > 0;
  if (r.count <= 0) reactions.delete(emoji);
  else reactions.set(emoji, r);
  renderReactions(seq);
}

async function toggleReaction(seq, emoji) {
  const add = !view.reactions.get(seq)?.get(emoji)?.me;
  const v = view;
  try {
    const ack = await client.react(room.team, seq, emoji, add);
    // Without an offset it already was so (another device of ours): nothing to change.
    if (v === view && ack.offset !== undefined) react(seq, emoji, true, add ? 1 : -1);
  } catch (err) {
    note(`reaction: ${err.code ?? ""} ${err.message ?? err}`);
  }
}

function fill(li, { body, deleted, edited_at }) {
  li.querySelector(".body").textContent = deleted ? "message deleted" : body;
  li.classList.toggle("deleted", !!deleted);
  li.classList.toggle("edited", !!edited_at);
}

/** Puts a message in its place by seq; false if it is already shown. */
function addMessage(m) {
  if (view.bySeq.has(m.seq)) return false;
  if (m.name) room.names.set(m.user, m.name);
  const i = above(view.seqs, m.seq);
  const li = messageEl(m);
  list.insertBefore(li, view.bySeq.get(view.seqs[i]) ?? null);
  view.seqs.splice(i, 0, m.seq);
  view.bySeq.set(m.seq, li);
  decorate(li, m);
  return true;
}

function change(seq, m) {
  const li = view.bySeq.get(seq);
  if (li) fill(li, { body: m.body, deleted: m.deleted, edited_at: !m.deleted });
}

function onMessage(m) {
  room.typists.delete(m.user);
  renderTyping();
  if (m.parent !== undefined) return onReply(m);
  const stick = atBottom();
  if (!addMessage(m)) return;
  renderReceipts();
  if (stick) scroller.scrollTop = scroller.scrollHeight;
  markRead();
}

const atBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;

/** Loads the newest page (no `before`), or the page of older messages before `before`. */
async function loadPage(before) {
  const v = view;
  if (v.loading || (before && !v.hasMore)) return;
  v.loading = true;
  older.textContent = "loading…";
  try {
    // Top-level messages only: replies are in their threads.
    const query = before ? { before, limit: PAGE, topLevel: true } : { limit: PAGE, topLevel: true };
    const page = await client.history(room.team, query);
    if (v !== view) return; // reset meanwhile
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    page.messages.forEach(addMessage);
    v.hasMore = page.has_more;
    // Older rows went in above: keep what the reader sees where it was.
    scroller.scrollTop = before ? scroller.scrollHeight - fromBottom : scroller.scrollHeight;
  } catch (err) {
    note(`history: ${err.message ?? err}`);
    return;
  } finally {
    v.loading = false;
    older.textContent = v.hasMore ? "" : `This is the beginning of #${room?.team}.`;
  }
  renderReceipts();
  markRead();
  if (v.hasMore && scroller.scrollTop < 40) loadPage(v.seqs[0]); // the page does not fill the view yet
}

scroller.addEventListener("scroll", () => {
  if (!view) return;
  if (scroller.scrollTop < 40 && view.hasMore) loadPage(view.seqs[0]);
  markRead();
});

// ---------------------------------------------------------------- composing

composer.body.addEventListener("input", () => {
  if (composer.body.value) client.typing(room.team);
  else client.stopTyping(room.team);
});

composer.addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = composer.body.value.trim();
  if (!body) return;
  composer.body.value = "";
  client.stopTyping(room.team);
  const r = room;
  const li = messageEl({ user: r.me, name: r.myName, body });
  li.classList.add("pending");
  li.dataset.state = "pending";
  pendingList.append(li);
  scroller.scrollTop = scroller.scrollHeight;
  try {
    const ack = await client.send(r.team, body); // kept in the library's outbox across reconnects
    if (r !== room) return;
    li.remove();
    addMessage({ ...ack, user: r.me, name: r.myName, body, meta: null });
    renderReceipts();
    scroller.scrollTop = scroller.scrollHeight;
    markRead();
  } catch (err) {
    li.classList.replace("pending", "failed");
    li.dataset.state = "failed";
    li.querySelector("time").textContent = `not sent: ${err.code ?? err.message ?? err}`;
  }
});

// ---------------------------------------------------------------- typing, receipts, presence

function renderTyping() {
  const names = [...room.typists].map(nameOf);
  typingLine.textContent =
    names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` :
    `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
}

/** "seen by …" under the newest shown message each other user has read. */
function renderReceipts() {
  const stick = atBottom();
  for (const el of list.querySelectorAll(".receipt")) el.remove();
  const readers = new Map(); // seq -> users
  for (const [user, seq] of receiptsOf(room.team)) {
    const i = above(view.seqs, seq) - 1;
    if (user === room.me || i < 0) continue;
    const at = view.seqs[i];
    readers.set(at, [...(readers.get(at) ?? []), user]);
  }
  for (const [seq, users] of readers) {
    view.bySeq.get(seq).append(h("div", { className: "receipt", textContent: `seen by ${users.map(nameOf).join(", ")}` },
      { testid: "receipt", users: users.join(" ") }));
  }
  if (stick) scroller.scrollTop = scroller.scrollHeight;
}

/** Marks read up to the newest message on screen, while the window has focus. */
function markRead() {
  if (!room || !document.hasFocus() || document.visibilityState !== "visible") return;
  const bottom = scroller.scrollTop + scroller.clientHeight;
  let i = view.seqs.length - 1;
  while (i >= 0 && view.bySeq.get(view.seqs[i]).offsetTop >= bottom) i--;
  const seq = view.seqs[i] ?? 0;
  // Replies count as read with the newest top-level message on screen (the thread is
  // marked read when open).
  const newest = Math.max(seq, thread ? Math.max(0, ...thread.seqs) : 0);
  if (newest > (room.lastRead.get(room.team) ?? 0)) {
    room.lastRead.set(room.team, newest);
    client.markRead(room.team, newest);
  }
}
window.addEventListener("focus", markRead);
document.addEventListener("visibilitychange", markRead);

function renderOnline(users) {
  for (const [user, info] of users) if (info.name) room.names.set(user, info.name);
  online.replaceChildren(...[...users.keys()].sort().map((user) =>
    h("li", { textContent: nameOf(user), className: user === room.me ? "me" : "" }, { user })));
  renderTyping();
}

// ---------------------------------------------------------------- threads

const threadList = $("thread-list"), threadComposer = $("thread-composer");

function threadMessage(m) {
  if (!thread || thread.seqs.has(m.seq)) return;
  thread.seqs.add(m.seq);
  const li = messageEl(m);
  li.dataset.testid = "reply";
  threadList.append(li);
  threadList.scrollTop = threadList.scrollHeight;
}

async function openThread(parent) {
  const t = (thread = { parent, seqs: new Set() });
  $("thread").hidden = false;
  const top = view.bySeq.get(parent);
  threadList.replaceChildren(h("li", { className: "msg" }, { testid: "thread-parent" },
    h("div", { className: "body", textContent: top?.querySelector(".body").textContent ?? "" })));
  try {
    let after = 0;
    for (;;) {
      const page = await client.replies(room.team, parent, { after, limit: 200 });
      if (t !== thread) return;
      page.messages.forEach(threadMessage);
      if (!page.has_more || page.messages.length === 0) break;
      after = page.messages.at(-1).seq;
    }
  } catch (err) {
    note(`thread: ${err.message ?? err}`);
  }
  markRead();
  threadComposer.body.focus();
}

function closeThread() {
  thread = null;
  $("thread").hidden = true;
  threadList.replaceChildren();
}
$("close-thread").addEventListener("click", closeThread);

/** A reply arrived live: its parent's count grows, and the open thread shows it. */
function onReply(m) {
  view.replies.set(m.parent, (view.replies.get(m.parent) ?? 0) + 1);
  renderReplies(m.parent);
  if (thread?.parent === m.parent) {
    threadMessage(m);
    markRead();
  }
}

threadComposer.addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = threadComposer.body.value.trim();
  if (!body || !thread) return;
  threadComposer.body.value = "";
  const r = room, parent = thread.parent;
  try {
    const ack = await client.send(r.team, body, undefined, { parent });
    if (r !== room) return;
    onReply({ ...ack, user: r.me, name: r.myName, body, meta: null, parent });
  } catch (err) {
    note(`reply not sent: ${err.code ?? err.message ?? err}`);
  }
});
