// The live page: events from the WebSocket /events (the objects of
// --format json), a row each, newest last. No framework, no build step.
import { rowFields, bodyText, headerText } from "./format.js";

const rows = document.getElementById("rows");
const detail = document.getElementById("detail");
const filterBox = document.getElementById("filter");
const pauseButton = document.getElementById("pause");
const statusText = document.getElementById("status");
const countsText = document.getElementById("counts");
const MAX_ROWS = 5000;  // older rows go, so a long capture does not fill the memory

let paused = false;
let held = [];          // events that arrived while paused
let seen = 0;
let missed = 0;

function matches(row) {
  const text = filterBox.value.trim().toLowerCase();
  return !text || row.dataset.search.includes(text);
}

function addRow(event) {
  const fields = rowFields(event);
  const row = document.createElement("tr");
  row.className = event.type;
  for (const value of fields.cells) {
    const cell = document.createElement("td");
    cell.textContent = value;
    cell.title = value;
    row.appendChild(cell);
  }
  row.dataset.search = fields.cells.join(" ").toLowerCase();
  row.hidden = !matches(row);
  row.addEventListener("click", () => show(row, event));
  rows.appendChild(row);
  while (rows.childElementCount > MAX_ROWS) rows.firstElementChild.remove();
}

function section(title, text) {
  const heading = document.createElement("h4");
  heading.textContent = title;
  const block = document.createElement("pre");
  block.textContent = text;
  block.className = title.replace(/\s+/g, "-");
  return [heading, block];
}

function show(row, event) {
  for (const other of rows.querySelectorAll("tr.selected")) other.classList.remove("selected");
  row.classList.add("selected");
  detail.hidden = false;
  detail.replaceChildren();
  const title = document.createElement("h3");
  title.textContent = rowFields(event).title;
  detail.appendChild(title);
  const parts = [];
  if (event.type === "http") {
    if (event.request) {
      parts.push(...section("request headers", headerText(event.request.headers)));
      parts.push(...section("request body", bodyText(event.request)));
    }
    if (event.response) {
      parts.push(...section("response headers", headerText(event.response.headers)));
      parts.push(...section("response body", bodyText(event.response)));
    }
  } else if (event.type === "data") {
    parts.push(...section("payload", bodyText({ body: null, body_b64: event.payload_b64 })));
  }
  parts.push(...section("event", JSON.stringify(event, null, 2)));
  detail.append(...parts);
}

function refreshCounts() {
  countsText.textContent = `${seen} events` + (missed ? `, ${missed} missed` : "") +
    (held.length ? `, ${held.length} held` : "");
}

function receive(event) {
  seen += 1;
  if (event.type === "lost" && event.reason === "queue_full") missed += event.records;
  if (paused) held.push(event); else addRow(event);
  refreshCounts();
}

filterBox.addEventListener("input", () => {
  for (const row of rows.children) row.hidden = !matches(row);
});
pauseButton.addEventListener("click", () => {
  paused = !paused;
  pauseButton.textContent = paused ? "resume" : "pause";
  if (!paused) {
    for (const event of held) addRow(event);
    held = [];
  }
  refreshCounts();
});
document.getElementById("clear").addEventListener("click", () => {
  rows.replaceChildren();
  detail.hidden = true;
});

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/events${location.search}`);
  socket.addEventListener("open", () => { statusText.textContent = "live"; });
  socket.addEventListener("message", (message) => receive(JSON.parse(message.data)));
  socket.addEventListener("close", () => {
    statusText.textContent = "disconnected; retrying";
    setTimeout(connect, 2000);
  });
}

async function showModule() {
  try {
    const response = await fetch("/status");
    if (response.ok) {
      const status = await response.json();
      document.title = `ecapture ${status.module}`;
    }
  } catch (error) { /* the WebSocket status says it */ }
}

showModule();
connect();
