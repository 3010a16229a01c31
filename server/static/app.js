// Live leaderboards: one tab per board (GET /api/boards), the selected board's
// top K over Server-Sent Events, its season with a live countdown, and a
// "find me" box showing one player's rank and the players around them.
//
// Only the selected board has an open stream. EventSource reconnects by itself
// and sends Last-Event-ID, so the server resumes from the last event it
// delivered; the page opens a new stream only on a gap (to get a snapshot),
// or after giving the browser's own reconnection a few seconds: then the page
// says it is offline and retries with exponential backoff and jitter.
// Server text is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const tabsEl = $("tabs");
const panelEl = $("panel");
const seasonEl = $("season");
const captionEl = $("caption");
const statusEl = $("status");
const updatedEl = $("updated");
const emptyEl = $("empty");
const findForm = $("find");
const findInput = $("find-id");
const findClear = $("find-clear");
const meEl = $("me");
const meSummaryEl = $("me-summary");
const aroundEl = $("around");
const endEl = document.createElement("time");

const BACKOFF_BASE_MS = 1000;      // the first retry of a failed stream or board list
const BACKOFF_CAP_MS = 30000;      // retries never wait longer than this
const RECONNECT_GRACE_MS = 4000;   // how long the browser's own reconnection may try
const CONNECT_TIMEOUT_MS = 10000;  // a new stream that has not opened by then has failed
const LIST_RETRY_MS = 3000;        // the board list is re-read when it lags the stream
const HIGHLIGHT_MS = 6000;         // how long a player who moved stays highlighted
const AROUND_COUNT = 3;            // players shown above and below the one found
const AROUND_MIN_GAP_MS = 1000;    // the around-me view is read at most once a second
const AROUND_POLL_MS = 15000;      // and at least this often (moves outside the top K)
const ME_KEY = "scoreboard.me";

const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");

let boards = [];        // as GET /api/boards lists them, the default board first
let selected = null;    // the shown board's id
let source = null;      // the shown board's EventSource
let rows = [];          // [{rank, userId, username, score}], in rank order
let position = null;    // {epoch, seq} of the last event applied; null until a snapshot
let shown = false;      // whether `rows` is the selected board's (else nothing is highlighted)
let updatedAt = null;   // when the shown board last changed on the page (ms)
const marks = new Map(); // userId -> {dir, gain, until, fresh}: players who just moved

let failures = 0;       // consecutive failed connection attempts (the backoff exponent)
let retryTimer = null;  // the next attempt after a failure
let retryAt = null;     // when it is due (ms), while offline
let graceTimer = null;  // gives up on a connection that does not (re)open in time
let graceBy = null;     // when it does (ms)
let boardsTimer = null;
let refreshing = false;

// ---- connection state -----------------------------------------------------

// loading -> live <-> reconnecting -> offline (retrying in N s) -> live
let state = "loading";

function setState(next) {
  state = next;
  showState();
}

function showState() {
  let text = state;
  if (state === "reconnecting") text = "reconnecting…";
  if (state === "offline") {
    const left = retryAt === null ? 0 : Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
    text = retryAt === null ? "offline, retrying now" : `offline, retrying in ${left} s`;
  }
  statusEl.className = "status " + state;
  if (statusEl.textContent !== text) statusEl.textContent = text;
}

// Exponential backoff with "equal jitter": half the ceiling, plus up to the other half at random.
function backoffMs(attempt) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function clearConnectionTimers() {
  clearTimeout(retryTimer);
  clearTimeout(graceTimer);
  retryTimer = graceTimer = null;
  retryAt = graceBy = null;
}

// Unless `es` opens by `deadline` (or an earlier deadline already set), give up on it.
function giveUpBy(es, deadline) {
  if (graceBy !== null && graceBy <= deadline) return;
  clearTimeout(graceTimer);
  graceBy = deadline;
  graceTimer = setTimeout(() => {
    if (source === es) goOffline(false);
  }, deadline - Date.now());
}

// Give up on the current stream; try again after a backoff.
function goOffline(refused) {
  clearConnectionTimers();
  if (source) source.close();
  source = null;
  const delay = backoffMs(failures);
  failures += 1;
  retryAt = Date.now() + delay;
  retryTimer = setTimeout(() => {
    retryTimer = null;
    retryAt = null;
    connect();
    // A refusal may mean the board is gone: re-read the list.
    if (refused) refreshBoards();
  }, delay);
  setState("offline");
}

function boardById(id) {
  return boards.find((b) => b.id === id);
}

// ---- the board list -------------------------------------------------------

async function fetchBoards() {
  const resp = await fetch("/api/boards", { cache: "no-store", headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`GET /api/boards answered ${resp.status}`);
  const list = (await resp.json()).boards;
  if (!Array.isArray(list) || list.length === 0) throw new Error("GET /api/boards listed no boards");
  // The default board first, the others in the server's order.
  return [...list.filter((b) => b.default), ...list.filter((b) => !b.default)];
}

async function start() {
  try {
    boards = await fetchBoards();
  } catch {
    const delay = backoffMs(failures);
    failures += 1;
    retryAt = Date.now() + delay;
    setState("offline");
    retryTimer = setTimeout(() => {
      retryTimer = null;
      retryAt = null;
      start();
    }, delay);
    return;
  }
  renderTabs();
  select(boards[0].id);
}

// Re-read the list (a season ended: its end moved). A season number the
// stream already told us about is never replaced by an older one.
async function refreshBoards() {
  if (refreshing) return;
  refreshing = true;
  clearTimeout(boardsTimer);
  let fresh;
  try {
    fresh = await fetchBoards();
  } catch {
    boardsTimer = setTimeout(refreshBoards, backoffMs(failures));
    return;
  } finally {
    refreshing = false;
  }
  let behind = false;
  for (const b of fresh) {
    const known = boardById(b.id);
    if (known && known.season.id > b.season.id) {
      b.season = known.season;
      behind = true;
    }
  }
  const sameTabs = fresh.length === boards.length &&
    fresh.every((b, i) => b.id === boards[i].id && b.title === boards[i].title);
  boards = fresh;
  if (!sameTabs) renderTabs();
  if (boardById(selected)) showBoard();
  else select(boards[0].id);
  if (behind) boardsTimer = setTimeout(refreshBoards, LIST_RETRY_MS);
}

// A season number seen on the stream: newer than the list's, the list is re-read.
function noteSeason(number) {
  const b = boardById(selected);
  if (!b || typeof number !== "number" || number <= b.season.id) return;
  b.season = { id: number, endsAt: undefined };  // the end is unknown until the list is re-read
  showSeason();
  refreshBoards();
}

// ---- tabs -----------------------------------------------------------------

function renderTabs() {
  tabsEl.replaceChildren(...boards.map((b, i) => {
    const tab = document.createElement("button");
    tab.type = "button";
    tab.id = `tab-${i}`;
    tab.className = "tab";
    tab.setAttribute("role", "tab");
    tab.setAttribute("aria-controls", panelEl.id);
    tab.dataset.board = b.id;
    tab.textContent = b.title || b.id;
    tab.addEventListener("click", () => select(b.id));
    return tab;
  }));
  markSelected();
}

function markSelected() {
  for (const tab of tabsEl.children) {
    const on = tab.dataset.board === selected;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;  // one tab stop; arrow keys move within the list
    if (on) panelEl.setAttribute("aria-labelledby", tab.id);
  }
}

tabsEl.addEventListener("keydown", (e) => {
  const tabs = [...tabsEl.children];
  const i = tabs.indexOf(document.activeElement);
  if (i < 0) return;
  const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 };
  if (!(e.key in moves)) return;
  e.preventDefault();
  const tab = tabs[(moves[e.key] + tabs.length) % tabs.length];
  tab.focus();
  select(tab.dataset.board);
});

function select(id) {
  if (id === selected && source) return;
  const switched = id !== selected;
  selected = id;
  markSelected();
  rows = [];
  position = null;
  shown = false;
  updatedAt = null;
  marks.clear();
  boardList.clear();
  render();
  showBoard();
  connect();
  if (switched && me) {
    aroundList.clear();
    showMe({ kind: "loading" });
    requestAround(true);
  }
}

// ---- the selected board ---------------------------------------------------

function showBoard() {
  const b = boardById(selected);
  captionEl.textContent = `Top ${b.topK}` + (b.order === "asc" ? " · lower is better" : "");
  document.title = `${b.title || b.id} · Scoreboard`;
  showSeason();
}

function countdown(seconds) {
  const days = Math.floor(seconds / 86400);
  const hms = [Math.floor(seconds / 3600) % 24, Math.floor(seconds / 60) % 60, seconds % 60]
    .map((n) => String(n).padStart(2, "0")).join(":");
  return days > 0 ? `${days}d ${hms}` : hms;
}

function showSeason() {
  const b = boardById(selected);
  if (!b) return;
  const { id, endsAt } = b.season;
  const label = `Season ${id}`;
  if (endsAt === undefined) {
    seasonEl.replaceChildren(label);
  } else if (endsAt === null) {
    seasonEl.replaceChildren(label, " · never resets");
  } else {
    const left = Math.ceil(endsAt - Date.now() / 1000);
    const end = new Date(endsAt * 1000);
    endEl.dateTime = end.toISOString();
    endEl.title = end.toLocaleString();
    endEl.textContent = left > 0 ? `ends in ${countdown(left)}` : "ending now";
    seasonEl.replaceChildren(label, " · ", endEl);
  }
}

function ago(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 2) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function showUpdated() {
  const text = updatedAt === null ? "" : `updated ${ago(Date.now() - updatedAt)}`;
  if (updatedEl.textContent !== text) updatedEl.textContent = text;
  if (updatedAt !== null) updatedEl.title = new Date(updatedAt).toLocaleString();
}

function tick() {
  showSeason();
  showUpdated();
  if (state === "offline") showState();
  expireMarks();
  if (me && Date.now() - aroundAt >= AROUND_POLL_MS) requestAround(false);
  setTimeout(tick, 1020 - (Date.now() % 1000));  // just after each second turns
}

function formatScore(score) {
  return typeof score === "number" ? score.toLocaleString() : String(score);
}

function formatGain(gain) {
  const sign = gain > 0 ? "+" : gain < 0 ? "\u2212" : "±";
  return sign + formatScore(Math.abs(gain));
}

// Whether `a` is a better score than `b` on the selected board.
function better(a, b) {
  return boardById(selected)?.order === "asc" ? a < b : a > b;
}

// ---- rows: one element per player, slid to its new place (FLIP) -------------

function cell(tag, cls) {
  const el = document.createElement(tag);
  el.className = cls;
  return el;
}

class RowList {
  constructor(tbody) {
    this.tbody = tbody;
    this.byUser = new Map();  // userId -> tr, so a player keeps their row as they move
  }

  clear() {
    this.byUser.clear();
    this.tbody.replaceChildren();
  }

  // Show `entries`; `decorate(tr, entry)` sets a row's highlights.
  render(entries, decorate) {
    const animate = !reducedMotion.matches && !document.hidden && this.byUser.size > 0;
    const before = new Map();
    if (animate) for (const [id, tr] of this.byUser) before.set(id, tr.getBoundingClientRect().top);
    const next = new Map();
    const trs = entries.map((entry) => {
      const tr = this.byUser.get(entry.userId) ?? RowList.build();
      RowList.fill(tr, entry);
      decorate(tr, entry);
      next.set(entry.userId, tr);
      return tr;
    });
    this.tbody.replaceChildren(...trs);
    this.byUser = next;
    if (!animate) return;
    // First, Last, Invert, Play: each row starts where it was and slides to its place.
    const moving = [];
    for (const [id, tr] of next) {
      const top = before.get(id);
      if (top === undefined) continue;  // a new row: its highlight shows it
      const dy = top - tr.getBoundingClientRect().top;
      if (Math.abs(dy) < 1) continue;
      tr.style.transition = "none";
      tr.style.transform = `translateY(${dy}px)`;
      moving.push(tr);
    }
    if (moving.length === 0) return;
    void this.tbody.offsetHeight;  // lay out the inverted positions before letting go
    for (const tr of moving) {
      tr.style.transition = "";
      tr.style.transform = "";
    }
  }

  static build() {
    const tr = document.createElement("tr");
    const who = cell("div", "who");
    who.append(cell("span", "name"));
    const player = cell("td", "player");
    player.append(who);
    tr.append(cell("td", "rank"), player, cell("td", "score"));
    return tr;
  }

  static fill(tr, entry) {
    const [rankTd, playerTd, scoreTd] = tr.cells;
    const name = playerTd.querySelector(".name");
    const username = entry.username ?? entry.userId;
    tr.dataset.userId = entry.userId;
    tr.dataset.rank = String(entry.rank);
    rankTd.textContent = String(entry.rank);
    name.textContent = username;
    name.title = username === entry.userId ? username : `${username} (${entry.userId})`;
    scoreTd.textContent = formatScore(entry.score);
  }
}

const boardList = new RowList($("rows"));
const aroundList = new RowList($("around-rows"));

// The arrow and gain of a player who moved, or none.
function setMove(tr, mark) {
  const who = tr.querySelector(".who");
  let badge = who.querySelector(".move");
  if (!mark) {
    badge?.remove();
    return;
  }
  if (!badge) {
    badge = cell("span", "move");
    const arrow = cell("span", "arrow");
    arrow.setAttribute("aria-hidden", "true");
    badge.append(arrow, cell("span", "sr-only"), cell("span", "gain"));
    who.append(badge);
  }
  badge.className = `move ${mark.dir}`;
  const [arrow, label, gain] = badge.children;
  arrow.textContent = mark.dir === "up" ? "▲" : "▼";
  label.textContent = mark.dir === "up" ? "moved up " : "moved down ";
  gain.textContent = mark.gain === null ? "" : formatGain(mark.gain);
}

function decorateBoardRow(tr, entry) {
  const mark = marks.get(entry.userId);
  const isMe = me !== null && entry.userId === me.id;
  if (mark?.fresh) {
    // Restart the highlight even if this row was already highlighted.
    tr.classList.remove("changed");
    void tr.offsetWidth;
    mark.fresh = false;
  }
  tr.classList.toggle("changed", mark !== undefined);
  tr.classList.toggle("me", isMe);
  if (isMe) tr.setAttribute("aria-current", "true");
  else tr.removeAttribute("aria-current");
  setMove(tr, mark);
}

function render() {
  boardList.render(rows, decorateBoardRow);
  emptyEl.hidden = position === null || rows.length > 0;
  showUpdated();
}

function expireMarks() {
  const now = Date.now();
  let expired = false;
  for (const [id, mark] of marks) {
    if (mark.until <= now) {
      marks.delete(id);
      expired = true;
    }
  }
  if (expired) render();
}

// The players whose score changed between `rows` and `next` (not those only pushed along).
function noteMoves(next) {
  if (!shown) return;
  const before = new Map(rows.map((e) => [e.userId, e]));
  const until = Date.now() + HIGHLIGHT_MS;
  for (const entry of next) {
    const prev = before.get(entry.userId);
    if (prev && prev.score === entry.score) continue;
    let dir;
    if (!prev) dir = "up";  // new on the board: it came from below
    else if (entry.rank !== prev.rank) dir = entry.rank < prev.rank ? "up" : "down";
    else dir = better(entry.score, prev.score) ? "up" : "down";
    const gain = prev && typeof prev.score === "number" ? entry.score - prev.score : null;
    marks.set(entry.userId, { dir, gain, until, fresh: true });
  }
}

// ---- the stream -----------------------------------------------------------

function inSequence(msg) {
  return position !== null && msg.epoch === position.epoch && msg.seq === position.seq + 1;
}

function changed(next) {
  noteMoves(next);
  rows = next;
  shown = true;
  updatedAt = Date.now();
  render();
  if (me) requestAround(false);
}

function onSnapshot(msg) {
  position = { epoch: msg.epoch, seq: msg.seq };
  changed(msg.topUsers.slice());
  noteSeason(msg.season);  // a season may have ended while this board was not shown
}

function onDiff(msg) {
  if (!inSequence(msg)) {
    connect();  // a gap: start over from a fresh snapshot
    return;
  }
  const byRank = new Map(rows.map((e) => [e.rank, e]));
  for (const change of msg.changes) {
    if (change.removed) byRank.delete(change.rank);
    else byRank.set(change.rank, change);
  }
  position = { epoch: msg.epoch, seq: msg.seq };
  changed([...byRank.values()].sort((a, b) => a.rank - b.rank));
}

function onSeason(msg) {
  if (!inSequence(msg)) {
    connect();
    return;
  }
  // The new season starts empty; its snapshot follows at the same seq.
  rows = [];
  shown = false;
  marks.clear();
  position = { epoch: msg.epoch, seq: msg.seq };
  updatedAt = Date.now();
  render();
  noteSeason(msg.season);
}

// A stream has opened: the connection is good again.
function opened() {
  clearConnectionTimers();
  failures = 0;
  setState("live");
}

function connect() {
  clearConnectionTimers();
  if (source) source.close();
  const es = new EventSource(`/api/boards/${encodeURIComponent(selected)}/stream`);
  source = es;
  position = null;  // a new stream starts with a snapshot
  if (state === "live" || state === "loading") setState("loading");
  else setState("reconnecting");
  giveUpBy(es, Date.now() + CONNECT_TIMEOUT_MS);
  // Events of a stream that was replaced are dropped.
  const on = (type, handler) => es.addEventListener(type, (e) => {
    if (source === es) handler(JSON.parse(e.data));
  });
  on("scoreboard:update", onSnapshot);
  on("scoreboard:diff", onDiff);
  on("board:season", onSeason);
  es.onopen = () => {
    if (source === es) opened();
  };
  es.onerror = () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up: an error status, not a cut stream.
      goOffline(true);
      return;
    }
    // The browser reconnects by itself (with Last-Event-ID); it gets a few seconds.
    if (state !== "offline") setState("reconnecting");
    giveUpBy(es, Date.now() + RECONNECT_GRACE_MS);
  };
}

// ---- find me: one player's rank and the players around them ---------------

let me = null;          // {id}: the player looked for, or null
let aroundAt = 0;       // when the around-me view was last asked for (ms)
let aroundBusy = false;
let aroundAgain = null; // null, or whether another read was asked for (true: at once)
let aroundTimer = null;

// Read the around-me view now (`immediate`) or within the rate limit.
function requestAround(immediate) {
  if (!me || selected === null) return;
  if (aroundBusy) {
    aroundAgain = aroundAgain || immediate;
    return;
  }
  if (immediate) {
    clearTimeout(aroundTimer);
    aroundTimer = null;
    fetchAround();
    return;
  }
  if (aroundTimer !== null) return;
  const wait = Math.max(0, aroundAt + AROUND_MIN_GAP_MS - Date.now());
  aroundTimer = setTimeout(() => {
    aroundTimer = null;
    fetchAround();
  }, wait);
}

async function fetchAround() {
  const id = me.id;
  const board = selected;
  aroundBusy = true;
  aroundAt = Date.now();
  let result;
  try {
    const url = `/api/boards/${encodeURIComponent(board)}/users/${encodeURIComponent(id)}` +
      `/around?count=${AROUND_COUNT}`;
    const resp = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    const code = body?.error?.code;
    if (resp.ok && Array.isArray(body?.entries)) result = { kind: "found", total: body.total, entries: body.entries };
    else if (code === "board_not_found") result = { kind: "error" };
    else if (resp.status === 404) result = { kind: "missing" };
    else if (code === "validation_failed") result = { kind: "invalid" };
    else result = { kind: "error" };
    if (code === "board_not_found") refreshBoards();
  } catch {
    result = { kind: "error" };
  } finally {
    aroundBusy = false;
  }
  const again = aroundAgain;
  aroundAgain = null;
  if (me && me.id === id && board === selected) showMe(result);
  if (me && (again !== null || me.id !== id || board !== selected)) {
    requestAround(again === true || me.id !== id || board !== selected);
  }
}

function boardTitle() {
  const b = boardById(selected);
  return b ? b.title || b.id : "this board";
}

// "<who><what>": a long name is cut with an ellipsis, the rest always shows.
function summarize(who, what) {
  const name = cell("span", "me-name");
  name.textContent = who;
  name.title = who;
  const rest = cell("span", "me-rest");
  rest.textContent = what;
  meSummaryEl.replaceChildren(name, rest);
}

function showMe(result) {
  // A failed refresh keeps what was found last; it is read again soon.
  if (result.kind === "error" && aroundList.byUser.size > 0) return;
  meEl.hidden = false;
  meEl.className = `me ${result.kind}`;
  if (result.kind !== "found") {
    aroundEl.hidden = true;
    aroundList.clear();
    summarize(`“${me.id}”`, {
      loading: ": looking…",
      missing: ` is not ranked on ${boardTitle()}.`,
      invalid: " is not a valid player id.",
      error: ": could not look it up; trying again soon.",
    }[result.kind]);
    return;
  }
  const mine = result.entries.find((e) => e.userId === me.id);
  if (!mine) {
    showMe({ kind: "missing" });
    return;
  }
  const name = mine.username ?? mine.userId;
  summarize(name, ` is #${mine.rank} of ${result.total} on ${boardTitle()}`);
  aroundEl.hidden = false;
  aroundList.render(result.entries, (tr, entry) => {
    const isMe = entry.userId === me.id;
    tr.classList.toggle("me", isMe);
    if (isMe) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
  });
}

function find(id) {
  me = id ? { id } : null;
  aroundAgain = null;
  clearTimeout(aroundTimer);
  aroundTimer = null;
  findClear.hidden = me === null;
  try {
    if (me) localStorage.setItem(ME_KEY, me.id);
    else localStorage.removeItem(ME_KEY);
  } catch {
    // Storage may be off; the search still works for this visit.
  }
  render();  // the found player's row in the top K
  if (!me) {
    meEl.hidden = true;
    aroundList.clear();
    return;
  }
  aroundList.clear();
  showMe({ kind: "loading" });
  requestAround(true);
}

findForm.addEventListener("submit", (e) => {
  e.preventDefault();
  find(findInput.value.trim());
});

findClear.addEventListener("click", () => {
  findInput.value = "";
  find("");
  findInput.focus();
});

function restoreMe() {
  let id = null;
  try {
    id = localStorage.getItem(ME_KEY);
  } catch {
    id = null;
  }
  if (id) {
    findInput.value = id;
    find(id);
  }
}

reducedMotion.addEventListener?.("change", render);
start().then(restoreMe);
tick();
