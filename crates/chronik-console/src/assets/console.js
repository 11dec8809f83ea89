// chronik console: the live tail and the rebuild buttons. Everything received is written
// with textContent, never parsed as HTML, so event data cannot become markup.
"use strict";

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value == null ? "" : String(value);
  if (cls) el.className = cls;
  return el;
}

function streamLink(id) {
  const a = text("a", id);
  a.href = "/streams/" + encodeURIComponent(id);
  return a;
}

function startTail() {
  const form = document.getElementById("tail-filters");
  const body = document.querySelector("#tail tbody");
  const status = document.getElementById("tail-status");
  if (!form || !body || !status) return;
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form).entries()) {
    if (v !== "") params.set(k, v);
  }
  const source = new EventSource("/api/tail?" + params.toString());
  let count = 0;
  source.addEventListener("open", () => { status.textContent = "following the feed (" + count + " events shown)"; status.className = "muted"; });
  source.addEventListener("event", (m) => {
    const e = JSON.parse(m.data);
    const row = document.createElement("tr");
    row.className = "new";
    row.dataset.stream = e.stream_id;
    row.appendChild(text("td", e.cursor));
    const s = document.createElement("td");
    s.appendChild(streamLink(e.stream_id));
    row.appendChild(s);
    row.appendChild(text("td", e.version, "num"));
    row.appendChild(text("td", e.event_type + " v" + e.schema_version));
    row.appendChild(text("td", e.recorded_at));
    const payload = e.read_as && e.read_as.payload ? e.read_as.payload : e.payload;
    row.appendChild(text("td", JSON.stringify(payload), "payload"));
    body.insertBefore(row, body.firstChild);
    while (body.children.length > 500) body.removeChild(body.lastChild);
    count += 1;
    status.textContent = "following the feed (" + count + " events shown)";
    status.className = "muted";
  });
  source.addEventListener("down", (m) => { status.textContent = "database unavailable, retrying: " + m.data; status.className = "banner down"; });
  source.addEventListener("up", () => { status.textContent = "database back, following the feed"; status.className = "muted"; });
  // A closed source is one the console refused (bad filters): the browser will not retry it.
  source.addEventListener("error", () => {
    status.textContent = source.readyState === EventSource.CLOSED
      ? "the console refused the tail (check the filters) and it stopped: reload the page"
      : "connection to the console lost, reconnecting…";
    status.className = "banner down";
  });
}

function rebuildButtons() {
  for (const button of document.querySelectorAll("button.rebuild")) {
    button.addEventListener("click", async () => {
      const name = button.dataset.name;
      const result = document.querySelector('span.result[data-for="' + CSS.escape(name) + '"]');
      const token = (document.getElementById("admin-token") || {}).value || "";
      const headers = token ? { Authorization: "Bearer " + token } : {};
      button.disabled = true;
      result.textContent = "rebuilding…";
      try {
        const r = await fetch("/api/projections/" + encodeURIComponent(name) + "/rebuild", { method: "POST", headers });
        const doc = await r.json();
        result.textContent = r.ok
          ? "rebuilt: " + doc.handled + " events applied (" + doc.scanned + " scanned)"
          : "refused (" + r.status + "): " + doc.error;
        result.className = "result " + (r.ok ? "ok" : "bad");
      } catch (err) {
        result.textContent = "failed: " + err;
        result.className = "result bad";
      } finally {
        button.disabled = false;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { startTail(); rebuildButtons(); });
