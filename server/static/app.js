// Live top 10 over Server-Sent Events. EventSource reconnects by itself and
// sends Last-Event-ID, so the server resumes from the last seq it delivered.
"use strict";

const rowsEl = document.getElementById("rows");
const statusEl = document.getElementById("status");
const emptyEl = document.getElementById("empty");
const positionEl = document.getElementById("position");
let board = [];        // [{rank, userId, username, score}], index = rank - 1
let position = null;   // {epoch, seq}

function setStatus(kind, text) {
  statusEl.className = "status " + kind;
  statusEl.textContent = text;
}

function render(changedRanks) {
  rowsEl.replaceChildren(...board.map((entry) => {
    const tr = document.createElement("tr");
    tr.dataset.userId = entry.userId;
    if (changedRanks.has(entry.rank)) tr.className = "changed";
    for (const [cls, text] of [["rank", entry.rank], ["name", entry.username], ["score", entry.score.toLocaleString()]]) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = String(text);
      tr.append(td);
    }
    return tr;
  }));
  emptyEl.hidden = board.length > 0;
  positionEl.textContent = position ? `seq ${position.seq}` : "";
}

function onSnapshot(msg) {
  const before = new Map(board.map((e) => [e.rank, e]));
  board = msg.topUsers.slice();
  position = { epoch: msg.epoch, seq: msg.seq };
  const changed = new Set(board.filter((e) => JSON.stringify(before.get(e.rank)) !== JSON.stringify(e)).map((e) => e.rank));
  render(changed);
}

function onDiff(msg) {
  if (!position || msg.epoch !== position.epoch || msg.seq !== position.seq + 1) {
    // A gap: start over from a fresh snapshot.
    source.close();
    connect();
    return;
  }
  const byRank = new Map(board.map((e) => [e.rank, e]));
  const changed = new Set();
  for (const change of msg.changes) {
    if (change.removed) byRank.delete(change.rank);
    else { byRank.set(change.rank, change); changed.add(change.rank); }
  }
  board = [...byRank.values()].sort((a, b) => a.rank - b.rank);
  position = { epoch: msg.epoch, seq: msg.seq };
  render(changed);
}

let source;
function connect() {
  source = new EventSource("/scores/stream");
  source.onopen = () => setStatus("live", "live");
  source.onerror = () => setStatus("reconnecting", "reconnecting…");
  source.addEventListener("scoreboard:update", (e) => onSnapshot(JSON.parse(e.data)));
  source.addEventListener("scoreboard:diff", (e) => onDiff(JSON.parse(e.data)));
}

connect();
