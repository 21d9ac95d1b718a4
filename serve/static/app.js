// The retr page: drop or choose an image, see the k most similar indexed images, click one to search with it.
// Everything comes from this server (no CDN). With --token, the token is asked once, kept for this tab
// (sessionStorage) and sent as a bearer header with every request, images included (fetched as blobs).
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("retr-token") || "";
let database = null;
let queryUrl = null;

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function url(path, params = {}) {
  const u = new URL(path, location.origin);
  if (database) u.searchParams.set("db", database);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function call(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (r.status === 401) {
    $("token-box").hidden = false;
    $("token").focus();
    throw new Error("this server needs its token");
  }
  const ct = r.headers.get("content-type") || "";
  const body = ct.startsWith("application/json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && body.error) || r.status + " " + r.statusText);
  return body;
}

function showImage(img, path) {
  if (!token) { img.src = path; return; }
  fetch(path, { headers: headers() })
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(r.statusText))))
    .then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => { img.alt = "(unavailable)"; });
}

function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

async function loadInfo() {
  const info = await call(url("/info"));
  if (!database) {
    database = info.name;
    const sel = $("db");
    sel.replaceChildren(...info.databases.map((n) => new Option(n, n, n === info.name, n === info.name)));
    $("db-label").hidden = info.databases.length < 2;
  }
  const parts = [
    plural(info.count, "image"),
    plural(info.bytes_per_vector, "byte") + " per vector (" + (100 * info.compression).toFixed(1) +
      "% smaller than its " + (4 * info.descriptor_dim) + "-byte float32 descriptor)",
  ];
  if (info.codec_label) parts.push(info.codec_label);
  if (info.codec_state) parts.push("codec " + info.codec_state);
  if (Object.keys(info.skipped || {}).length) parts.push(plural(Object.keys(info.skipped).length, "skipped file"));
  $("info").textContent = info.name + ": " + parts.join(" · ");
  $("info").dataset.count = info.count;
}

function render(answer) {
  const grid = $("results");
  grid.replaceChildren();
  for (const m of answer.results) {
    const fig = document.createElement("figure");
    fig.className = "result";
    fig.tabIndex = 0;
    Object.assign(fig.dataset, { id: m.id, rank: m.rank, score: m.score, path: m.path });
    const img = document.createElement("img");
    img.alt = m.path;
    img.loading = "lazy";
    showImage(img, url("/images/" + m.id + "/thumb"));
    const cap = document.createElement("figcaption");
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = "#" + m.rank;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = m.score.toFixed(3);
    cap.append(rank, score);
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = m.path;
    path.title = m.path;
    fig.append(img, cap, path);
    const again = () => searchId(m.id);
    fig.addEventListener("click", again);
    fig.addEventListener("keydown", (e) => { if (e.key === "Enter") again(); });
    grid.append(fig);
  }
  grid.dataset.generation = answer.generation;
  status(plural(answer.results.length, "result") + " for " + answer.query + " (" + answer.ms + " ms)");
}

function k() {
  const v = parseInt($("k").value, 10);
  return Number.isFinite(v) && v > 0 ? Math.min(v, 1000) : 12;
}

async function search(body, label) {
  status("searching " + label + "…");
  $("results").setAttribute("aria-busy", "true");
  const t0 = performance.now();
  try {
    const answer = await call(url("/search"), body);
    answer.ms = Math.round(performance.now() - t0);
    render(answer);
  } catch (e) {
    $("results").replaceChildren();
    status(e.message, true);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

function showQuery(src) {
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = null;
  const img = $("query-img");
  img.hidden = false;
  if (src instanceof Blob) {
    queryUrl = URL.createObjectURL(src);
    img.src = queryUrl;
  } else {
    showImage(img, src);
  }
}

function searchFile(file) {
  if (!file) return;
  showQuery(file);
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("k", k());
  search({ method: "POST", body: form }, file.name);
}

function searchId(id) {
  showQuery(url("/images/" + id + "/thumb"));
  search({ method: "POST", headers: { "Content-Type": "application/json" },
           body: JSON.stringify({ id: id, k: k() }) }, "image " + id);
  window.scrollTo({ top: 0, behavior: "smooth" });
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => searchFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchFile(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file").click(); });
  $("db").addEventListener("change", (e) => {
    database = e.target.value;
    $("results").replaceChildren();
    status("");
    loadInfo().catch((err) => status(err.message, true));
  });
  $("token-ok").addEventListener("click", () => {
    token = $("token").value.trim();
    sessionStorage.setItem("retr-token", token);
    $("token-box").hidden = true;
    loadInfo().then(() => status("")).catch((err) => status(err.message, true));
  });
  loadInfo().catch((err) => status(err.message, true));
}

setUp();
