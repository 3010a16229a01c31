// Live leaderboards: one tab per board (GET /api/boards), the selected board's
// top K over Server-Sent Events, and its season with a live countdown.
//
// Only the selected board has an open stream. EventSource reconnects by itself
// and sends Last-Event-ID, so the server resumes from the last seq it
// delivered; the page opens a new stream only on a gap (to get a snapshot) or
// when the browser gave up. Server text is only ever set as textContent.
"use strict";

const tabsEl = document.getElementById("tabs");
const panelEl = document.getElementById("panel");
const seasonEl = document.getElementById("season");
const captionEl = document.getElementById("caption");
const rowsEl = document.getElementById("rows");
const statusEl = document.getElementById("status");
const emptyEl = document.getElementById("empty");
const positionEl = document.getElementById("position");
const endEl = document.createElement("time");

const RETRY_MS = 3000;  // after a failed board list, or a stream the browser gave up on

let boards = [];        // as GET /api/boards lists them, the default board first
let selected = null;    // the shown board's id
let source = null;      // the shown board's EventSource
let rows = [];          // [{rank, userId, username, score}], in rank order
let position = null;    // {epoch, seq} of the last event applied; null until a snapshot
let shown = false;      // whether `rows` is the selected board's (else nothing is highlighted)
let retryTimer = null;
let refreshing = false;

function setStatus(kind, text) {
  statusEl.className = "status " + kind;
  statusEl.textContent = text;
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
    setStatus("reconnecting", "reconnecting…");
    retryTimer = setTimeout(start, RETRY_MS);
    return;
  }
  renderTabs();
  select(boards[0].id);
  tick();
}

// Re-read the list (a season ended: its end moved). A season number the
// stream already told us about is never replaced by an older one.
async function refreshBoards() {
  if (refreshing) return;
  refreshing = true;
  let fresh;
  try {
    fresh = await fetchBoards();
  } catch {
    setTimeout(refreshBoards, RETRY_MS);
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
  if (behind) setTimeout(refreshBoards, RETRY_MS);
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
  selected = id;
  markSelected();
  rows = [];
  position = null;
  shown = false;
  render(new Set());
  showBoard();
  connect();
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

function tick() {
  showSeason();
  setTimeout(tick, 1020 - (Date.now() % 1000));  // just after each second turns
}

function formatScore(score) {
  return typeof score === "number" ? score.toLocaleString() : String(score);
}

function render(changedRanks) {
  rowsEl.replaceChildren(...rows.map((entry) => {
    const tr = document.createElement("tr");
    tr.dataset.userId = entry.userId;
    if (changedRanks.has(entry.rank)) tr.className = "changed";
    for (const [cls, text] of [["rank", entry.rank], ["name", entry.username], ["score", formatScore(entry.score)]]) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = String(text);
      tr.append(td);
    }
    return tr;
  }));
  emptyEl.hidden = position === null || rows.length > 0;
  positionEl.textContent = position ? `seq ${position.seq}` : "";
}

// ---- the stream -----------------------------------------------------------

function inSequence(msg) {
  return position !== null && msg.epoch === position.epoch && msg.seq === position.seq + 1;
}

function onSnapshot(msg) {
  const before = new Map(rows.map((e) => [e.rank, e]));
  rows = msg.topUsers.slice();
  position = { epoch: msg.epoch, seq: msg.seq };
  const changed = !shown ? new Set() : new Set(rows
    .filter((e) => JSON.stringify(before.get(e.rank)) !== JSON.stringify(e))
    .map((e) => e.rank));
  shown = true;
  render(changed);
  noteSeason(msg.season);  // a season may have ended while this board was not shown
}

function onDiff(msg) {
  if (!inSequence(msg)) {
    connect();  // a gap: start over from a fresh snapshot
    return;
  }
  const byRank = new Map(rows.map((e) => [e.rank, e]));
  const changed = new Set();
  for (const change of msg.changes) {
    if (change.removed) byRank.delete(change.rank);
    else { byRank.set(change.rank, change); changed.add(change.rank); }
  }
  rows = [...byRank.values()].sort((a, b) => a.rank - b.rank);
  position = { epoch: msg.epoch, seq: msg.seq };
  render(changed);
}

function onSeason(msg) {
  if (!inSequence(msg)) {
    connect();
    return;
  }
  // The new season starts empty; its snapshot follows at the same seq.
  rows = [];
  position = { epoch: msg.epoch, seq: msg.seq };
  render(new Set());
  noteSeason(msg.season);
}

function connect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  const es = new EventSource(`/api/boards/${encodeURIComponent(selected)}/stream`);
  source = es;
  position = null;  // a new stream starts with a snapshot
  setStatus("connecting", "connecting");
  // Events of a stream that was replaced are dropped.
  const on = (type, handler) => es.addEventListener(type, (e) => {
    if (source === es) handler(JSON.parse(e.data));
  });
  on("scoreboard:update", onSnapshot);
  on("scoreboard:diff", onDiff);
  on("board:season", onSeason);
  es.onopen = () => {
    if (source === es) setStatus("live", "live");
  };
  es.onerror = () => {
    if (source !== es) return;
    setStatus("reconnecting", "reconnecting…");
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (an error answer, not a cut stream). Try again
      // later, and re-read the list in case the board is gone.
      retryTimer = setTimeout(() => {
        connect();
        refreshBoards();
      }, RETRY_MS);
    }
  };
}

start();
