// hyops status page: a session from the URL fragment, then the cloud, live (server-sent events).
// Everything shown is built with textContent: nothing the cloud says is read as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let stream = null;
let lastGood = null;
let ended = false;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function isDown(n) { return n.state !== "ready"; }
function isManager(n) { return n.role === "manager"; }

// --- the session ---------------------------------------------------------------------------

function shut(message) {
  // nothing of the cloud stays on the page once there is no valid session
  ended = true;
  if (stream) { stream.close(); stream = null; }
  $("cloud").hidden = true;
  $("banner").hidden = true;
  $("logout").hidden = true;
  for (const id of ["nodes-table", "services-table"]) $(id).tBodies[0].replaceChildren();
  $("summary-list").replaceChildren();
  $("map-drawing").replaceChildren();
  $("autopilot-list").replaceChildren();
  $("logs-text").textContent = "";
  $("gate-message").textContent = message;
  $("gate").hidden = false;
  $("live").textContent = "No session";
  $("live").classList.remove("lost");
  document.title = "hyops · no session";
}

async function openSession() {
  const params = new URLSearchParams(location.hash.slice(1));
  const ticket = params.get("ticket");
  if (!ticket) return;
  history.replaceState(null, "", location.pathname);  // the ticket leaves the address bar
  const answer = await fetch("/ui/session", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ticket }), credentials: "same-origin",
  });
  if (!answer.ok) {
    const body = await answer.json().catch(() => ({}));
    throw new Error(body.message || "the session could not be opened");
  }
}

async function refusal(answer) {
  const body = await answer.json().catch(() => ({}));
  return body.message || `refused (${answer.status})`;
}

// --- drawing the cloud -----------------------------------------------------------------------

function render(view) {
  $("cloud-name").textContent = view.cloud_id ? "· " + view.cloud_id : "";
  $("served-by").textContent = "served by " + view.served_by;
  document.title = "hyops · " + (view.cloud_id || "cloud");
  if (view.session) {
    $("logout").hidden = false;
    $("logout").title = `session ${view.session.id}, expires ${view.session.expires}`;
  }
  if (!view.ok) {
    const when = lastGood
      ? ` What you see below is what it last knew, at ${(lastGood.at || "?").replace("T", " ")}.` : "";
    const banner = $("banner");
    const problem = view.problem.replace(/\.*$/, ".");
    banner.textContent = `⚠ ${view.served_by} has lost the managers: ${problem}${when}`;
    banner.hidden = false;
    $("cloud").classList.add("stale");
    $("live").textContent = "Live, but the managers are out of reach";
    $("live").classList.add("lost");
    if (lastGood) $("cloud").hidden = false;
    return;
  }
  lastGood = view;
  $("banner").hidden = true;
  $("cloud").classList.remove("stale");
  $("live").textContent = "Live · updated " + (view.at || "now").replace("T", " ");
  $("live").classList.remove("lost");
  $("gate").hidden = true;
  $("cloud").hidden = false;
  renderSummary(view);
  renderMap(view.nodes);
  renderNodes(view.nodes);
  renderServices(view.services);
  renderAutopilot(view.autopilot || {});
  renderLogChoices(view);
}

function renderSummary(view) {
  const s = view.safety;
  const leader = view.nodes.find((n) => n.leader);
  const down = view.nodes.filter(isDown).map((n) => n.name);
  const workers = view.nodes.filter((n) => !isManager(n));
  const rows = [
    ["Leader", leader ? leader.name : "none (no leader: changes are stopped)"],
    ["Managers", `${s.reachable} of ${s.managers} reachable` +
      (s.joining.length ? `, ${s.joining.join(", ")} joining` : "") +
      (s.leftover && s.leftover.length ? `, ${s.leftover.join(", ")} a worker still in Raft` : "")],
    ["Quorum", `${s.quorum} managers needed`],
    ["Margin", s.margin < 0 ? `${s.margin}: quorum LOST, no change can be made`
      : s.margin === 0 ? "0: losing one more manager stops every change"
        : `${s.margin}: ${s.tolerates} more manager${s.tolerates === 1 ? "" : "s"} may be lost`],
    ["Workers", workers.length
      ? `${workers.filter((n) => !isDown(n)).length} of ${workers.length} ready` : "none"],
    ["Down", down.length ? down.join(", ") : "none"],
  ];
  const dl = $("summary-list");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    dl.append(el("dt", k));
    const dd = el("dd", v);
    if ((k === "Down" && down.length) || (k === "Margin" && s.margin <= 0)) dd.className = "mark-down";
    dl.append(dd);
  }
}

function renderMap(nodes) {
  const managers = nodes.filter(isManager);
  const workers = nodes.filter((n) => !isManager(n));
  const width = Math.max(420, 165 * Math.max(managers.length, workers.length, 1));
  const height = workers.length ? 250 : 130;
  const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const spot = new Map();
  const place = (list, y) => list.forEach((n, i) => {
    spot.set(n.name, { x: (width * (i + 0.5)) / list.length, y });
  });
  place(managers, 55);
  place(workers, 185);
  const lines = svg("g", { stroke: "#888", "stroke-width": 1.5 });
  for (let i = 0; i < managers.length; i++) {
    for (let j = i + 1; j < managers.length; j++) {
      const a = spot.get(managers[i].name), b = spot.get(managers[j].name);
      lines.append(svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
    }
  }
  const leader = managers.find((n) => n.leader);
  for (const w of workers) {
    const to = spot.get((leader || managers[0] || w).name), from = spot.get(w.name);
    lines.append(svg("line", { x1: from.x, y1: from.y, x2: to.x, y2: to.y,
      "stroke-dasharray": "2 4" }));
  }
  drawing.append(lines);
  const described = [];
  for (const n of nodes) {
    const { x, y } = spot.get(n.name);
    const down = isDown(n);
    const g = svg("g", { "data-node": n.name });
    const look = { fill: down ? "#f3f3f3" : "#e8f0fe", stroke: down ? "#a50e0e" : "#1b1b1b",
      "stroke-width": n.leader ? 4 : 2 };
    if (down) look["stroke-dasharray"] = "6 4";
    g.append(isManager(n) ? svg("circle", { cx: x, cy: y, r: 26, ...look })
      : svg("rect", { x: x - 24, y: y - 24, width: 48, height: 48, rx: 3, ...look }));
    if (down) {
      g.append(svg("text", { x, y: y + 9, "text-anchor": "middle", "font-size": 28,
        fill: "#a50e0e", "font-weight": 700 }, "✕"));
    } else if (n.leader) {
      g.append(svg("text", { x, y: y + 9, "text-anchor": "middle", "font-size": 26 }, "★"));
    }
    const label = n.name + (n.leader ? " · leader" : "") + (down ? " · DOWN" : "");
    g.append(svg("text", { x, y: y + 46, "text-anchor": "middle", "font-size": 15,
      "font-weight": down || n.leader ? 700 : 400 }, label));
    g.append(svg("title", {}, `${n.name}: ${n.role}, ${n.state}`));
    drawing.append(g);
    described.push(`${n.name} ${n.role}${n.leader ? " and leader" : ""}, ${down ? "down" : "up"}`);
  }
  drawing.setAttribute("aria-label", "Map of the cloud: " + described.join("; "));
  $("map-drawing").replaceChildren(drawing);
}

function renderNodes(nodes) {
  const body = $("nodes-table").tBodies[0];
  body.replaceChildren();
  for (const n of nodes) {
    const tr = el("tr");
    tr.dataset.node = n.name;
    if (isDown(n)) tr.className = "down";
    const name = el("th", n.name);
    name.scope = "row";
    tr.append(name);
    tr.append(el("td", n.role, "role"));
    const stateCell = el("td", isDown(n) ? `✕ ${n.state}` : n.state, "state");
    if (isDown(n)) stateCell.classList.add("mark-down");
    tr.append(stateCell);
    tr.append(el("td", n.availability, "availability"));
    const mgr = isManager(n) ? (n.leader ? "★ leader" : (n.reachability || "?")) : "";
    tr.append(el("td", mgr, n.leader ? "manager mark-leader" : "manager"));
    tr.append(el("td", n.cpus ?? "?"));
    tr.append(el("td", bytes(n.memory)));
    tr.append(el("td", n.addr || ""));
    body.append(tr);
  }
}

function renderServices(services) {
  const body = $("services-table").tBodies[0];
  body.replaceChildren();
  $("no-services").hidden = services.length > 0;
  for (const s of services) {
    const tr = el("tr");
    tr.dataset.service = s.name;
    const name = el("th", s.name);
    name.scope = "row";
    tr.append(name, el("td", s.mode));
    const short = (s.running ?? 0) < (s.replicas ?? 0);
    tr.append(el("td", `${s.running ?? "?"} / ${s.replicas ?? "?"}` + (short ? " (short)" : ""),
      short ? "mark-short" : ""));
    const where = s.tasks.map((t) => (t.slot ? `#${t.slot} ` : "") + `${t.node} (${t.state})`);
    tr.append(el("td", where.join(", ") || "nowhere", "wrap"));
    tr.append(el("td", s.image));
    body.append(tr);
  }
}

function renderAutopilot(pilot) {
  const next = pilot.next;
  $("autopilot-next").textContent = (pilot.node ? `Leader ${pilot.node}, next: ` : "") + (next
    ? `${next.action}${next.node ? " " + next.node : ""} (${next.reason})`
    : (pilot.note || "nothing to do"));
  const list = $("autopilot-list");
  list.replaceChildren();
  for (const d of pilot.recent || []) {
    const li = el("li");
    li.append(el("strong", `${(d.time || "").replace("T", " ")} ${d.action}${d.node ? " " + d.node : ""}`));
    li.append(document.createTextNode(` — ${d.result}. `));
    li.append(el("span", d.reason, "reason"));
    list.append(li);
  }
  if (!list.children.length) list.append(el("li", "No decisions yet."));
}

function renderLogChoices(view) {
  const select = $("logs-of");
  const wanted = [...view.nodes.map((n) => "node:" + n.name),
    ...view.services.map((s) => "service:" + s.name)];
  const have = [...select.options].map((o) => o.value);
  if (wanted.join() === have.join()) return;
  const chosen = select.value;
  select.replaceChildren();
  for (const v of wanted) {
    const [kind, name] = v.split(/:(.*)/s);
    const option = el("option", `${kind} ${name}`);
    option.value = v;
    select.append(option);
  }
  if (wanted.includes(chosen)) select.value = chosen;
}

async function showLogs(event) {
  event.preventDefault();
  const [kind, name] = $("logs-of").value.split(/:(.*)/s);
  if (!name) return;
  const tail = $("logs-tail").value || "50";
  $("logs-note").textContent = `Reading the last ${tail} lines of ${kind} ${name}…`;
  const answer = await fetch(`/ui/logs?${kind}=${encodeURIComponent(name)}&tail=${encodeURIComponent(tail)}`,
    { credentials: "same-origin" });
  if (answer.status === 401) { shut(await refusal(answer)); return; }
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) { $("logs-note").textContent = body.message || "no log lines"; return; }
  const text = body.lines.map((l) =>
    `${(l.time || "").slice(0, 19).replace("T", " ")} ${l.node || l.service || ""} ${l.error || l.line}`);
  $("logs-text").textContent = text.join("\n");
  $("logs-note").textContent = `${body.lines.length} lines of ${kind} ${name}` +
    (body.note ? ` (${body.note})` : "");
}

// --- live --------------------------------------------------------------------------------

function follow() {
  if (ended) return;
  stream = new EventSource("/ui/events");
  stream.addEventListener("cloud", (e) => render(JSON.parse(e.data)));
  stream.addEventListener("ended", (e) => shut(JSON.parse(e.data).message));
  let planned = false;  // the agent ends each stream after a few seconds; the browser reconnects
  stream.addEventListener("again", () => { planned = true; });
  stream.onerror = async () => {
    if (ended) return;
    if (planned && stream.readyState === EventSource.CONNECTING) { planned = false; return; }
    if (stream.readyState === EventSource.CLOSED) {
      // refused (not a stream): ask why, then try again unless the session ended
      stream = null;
      const answer = await fetch("/ui/state", { credentials: "same-origin" }).catch(() => null);
      if (answer && answer.status === 401) { shut(await refusal(answer)); return; }
      lostServer();
      setTimeout(follow, 2000);
    } else {
      lostServer();
    }
  };
}

function lostServer() {
  $("live").textContent = "Lost the connection to the node serving this page; retrying…";
  $("live").classList.add("lost");
}

async function start() {
  $("logs-form").addEventListener("submit", showLogs);
  $("logout").addEventListener("click", async () => {
    if (!confirm("End this session? The page stops showing the cloud.")) return;
    await fetch("/ui/logout", { method: "POST", credentials: "same-origin" });
    shut("You ended this session.");
  });
  try {
    await openSession();
  } catch (err) {
    shut(err.message);
    return;
  }
  const answer = await fetch("/ui/state", { credentials: "same-origin" });
  if (answer.status === 401) { shut(await refusal(answer)); return; }
  if (answer.ok) render({ ...(await answer.json()), at: new Date().toISOString().slice(0, 19) + "Z" });
  follow();
}

document.addEventListener("DOMContentLoaded", start);
