// The teamchat demo page: one team at a time, spoken through the teamchat-client library.
import { TeamchatClient } from "teamchat-client";

const PAGE = 50; // messages per history page
const STORE = "teamchat-demo"; // localStorage key of the last name and team

const $ = (id) => document.getElementById(id);
const login = $("login"), chat = $("chat"), badge = $("conn-state");
const scroller = $("scroller"), older = $("older"), list = $("list"), pendingList = $("pending");
const typingLine = $("typing"), composer = $("composer"), online = $("online");

let client = null; // the TeamchatClient while in a room
let room = null; // { team, me, myName, names, receipts, typists, lastRead }
let view = null; // the message list: { seqs (ascending), bySeq: seq -> <li>, hasMore, loading }

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
  const user = userId(name);
  localStorage.setItem(STORE, JSON.stringify({ name, team }));
  // The library asks on every (re)connect and before the token expires.
  const getToken = async () => {
    const res = await fetch("/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user, name, teams: [team] }),
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
  enter({ user, name, team, getToken });
});

async function enter({ user, name, team, getToken }) {
  room = { team, me: user, myName: name, names: new Map([[user, name]]), receipts: new Map(), typists: new Set(), lastRead: 0 };
  view = { seqs: [], bySeq: new Map(), hasMore: true, loading: false };
  login.hidden = true;
  chat.hidden = $("switch").hidden = false;
  $("room-title").textContent = `#${team} · ${name}`;
  list.replaceChildren();
  pendingList.replaceChildren();
  $("notices").replaceChildren();
  $("notices").hidden = $("removed").hidden = true;
  composer.body.disabled = composer.querySelector("button").disabled = false;

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  client = new TeamchatClient({ url: `${scheme}://${location.host}/ws`, httpUrl: location.origin, getToken });
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
  on("receipt", ({ user, seq }) => {
    room.receipts.set(user, Math.max(seq, room.receipts.get(user) ?? 0));
    renderReceipts();
  });
  on("receipts", ({ receipts }) => {
    room.receipts = new Map(receipts.map((r) => [r.user, r.seq]));
    room.lastRead = Math.max(room.lastRead, room.receipts.get(room.me) ?? 0);
    renderReceipts();
  });
  on("presence", ({ users }) => renderOnline(users));
  on("reset", () => {
    // The server could not replay what we missed: start the list again from the newest page.
    view = { seqs: [], bySeq: new Map(), hasMore: true, loading: false };
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
  try {
    await client.join(team);
  } catch (err) {
    note(`could not join #${team}: ${err.code ?? ""} ${err.message ?? err}`);
    return;
  }
  loadPage();
  composer.body.focus();
}

$("switch").addEventListener("click", () => {
  client?.close();
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
  return true;
}

function change(seq, m) {
  const li = view.bySeq.get(seq);
  if (li) fill(li, { body: m.body, deleted: m.deleted, edited_at: !m.deleted });
}

function onMessage(m) {
  room.typists.delete(m.user);
  renderTyping();
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
    const page = await client.history(room.team, before ? { before, limit: PAGE } : { limit: PAGE });
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
  for (const [user, seq] of room.receipts) {
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
  if (seq > room.lastRead) {
    room.lastRead = seq;
    client.markRead(room.team, seq);
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
