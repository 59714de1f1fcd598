// How an event of --format json is shown: pure functions, no DOM.

function time(ts) {
  const date = new Date(Math.floor(ts / 1e6));
  return date.toISOString().slice(11, 23);
}

function size(event) {
  if (event.type === "http") {
    const request = event.request ? event.request.body_len : 0;
    const response = event.response ? event.response.body_len : 0;
    return String(request + response);
  }
  if (event.type === "data") return String(event.len);
  if (event.type === "lost") return `${event.records} rec/${event.bytes} B`;
  return "";
}

function duration(event) {
  if (typeof event.duration_ns !== "number") return "";
  return `${(event.duration_ns / 1e6).toFixed(1)} ms`;
}

function host(event) {
  if (event.authority) return event.authority;
  if (event.url) {
    try { return new URL(event.url).host; } catch (error) { return ""; }
  }
  return event.dst || "";
}

export function rowFields(event) {
  const process = event.comm != null ? `${event.comm} (${event.pid})` :
    event.pid != null ? String(event.pid) : "";
  let method = event.method || "";
  let path = event.path || "";
  let status = event.status != null ? String(event.status) : "";
  if (event.type === "data") {
    method = event.direction || "";
  } else if (event.type === "lost") {
    method = event.reason;
  } else if (event.type === "close") {
    method = event.cause || "";
  } else if (event.type === "command") {
    path = event.line || event.command || "";
    status = event.status != null ? String(event.status) : "";
  }
  const cells = [time(event.ts), process, event.type, method, host(event), path, status,
    size(event), duration(event)];
  const title = event.type === "http" ? `${method} ${event.url || path} → ${status}` :
    `${event.type} ${process}`;
  return { cells, title };
}

export function headerText(pairs) {
  if (!Array.isArray(pairs)) return "";
  return pairs.map(([name, value]) => `${name}: ${value}`).join("\n");
}

// A body as text when the capture decoded it (UTF-8), else its bytes as hex.
export function bodyText(part) {
  if (part.body != null) return part.body;
  if (part.body_b64 == null) return "(no body)";
  const bytes = atob(part.body_b64);
  const raw = Uint8Array.from(bytes, (character) => character.charCodeAt(0));
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch (error) { /* not text: hex below */ }
  let text = "";
  for (let index = 0; index < bytes.length; index += 16) {
    const line = [];
    for (let at = index; at < Math.min(index + 16, bytes.length); at += 1) {
      line.push(bytes.charCodeAt(at).toString(16).padStart(2, "0"));
    }
    text += `${index.toString(16).padStart(8, "0")}  ${line.join(" ")}\n`;
  }
  return text || "(empty)";
}
