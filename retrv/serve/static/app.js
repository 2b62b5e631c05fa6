// The retrv search page: a query (words, an image, or both) sent to /api/search, the hits as a grid of
// thumbnails. Plain JavaScript, no build step. Keyboard: "/" focuses the search box, Enter searches, Tab walks
// the results, Enter opens one, Escape closes it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, info: null };

function takeTokenFromUrl() {
  // /#token=T (what `retrv serve --token T` prints): kept as a cookie for the API and the thumbnails, then
  // removed from the address bar. The fragment never reaches the server, so the token is in no request log.
  const match = location.hash.match(/token=([^&]+)/);
  if (!match) return;
  document.cookie = `retrv_token=${match[1]}; path=/; SameSite=Strict`;
  history.replaceState(null, "", location.pathname + location.search);
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = { error: `the server answered HTTP ${response.status}` };
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.dataset.kind = kind || "";
}

async function loadInfo() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    setStatus(e.message, "error");
    return;
  }
  const indexSelect = $("index");
  for (const index of state.info.indexes) {
    indexSelect.add(new Option(`${baseName(index.name)} (${index.items} items)`, index.name));
  }
  $("index-label").hidden = state.info.indexes.length < 2;
  const rerankSelect = $("rerank");
  for (const mode of state.info.rerank.modes) rerankSelect.add(new Option(mode, mode));
  rerankSelect.value = state.info.rerank.default;
  rerankSelect.disabled = state.info.rerank.modes.length < 2;
  const first = state.info.indexes[0];
  setStatus(`${first.items} items in ${baseName(first.name)}. Type words, or drop or paste an image.`);
}

function setImage(file) {
  if (state.image) URL.revokeObjectURL(state.image.url);
  state.image = file ? { file, url: URL.createObjectURL(file) } : null;
  $("image-chip").hidden = !file;
  $("image-preview").src = file ? state.image.url : "";
  $("image-name").textContent = file ? file.name || "pasted image" : "";
  $("image-input").value = "";
}

function imageOf(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
}

async function search() {
  const q = $("q").value.trim();
  if (!q && !state.image) {
    setStatus("Type words, or drop or paste an image.");
    return;
  }
  const form = new FormData();
  if (q) form.append("q", q);
  if (state.image) form.append("image", state.image.file, state.image.file.name || "pasted image");
  form.append("k", $("k").value || "20");
  if ($("index").value) form.append("index", $("index").value);
  if ($("rerank").value) form.append("rerank", $("rerank").value);
  if ($("min-score").value !== "") form.append("min_score", $("min-score").value);
  if ($("under").value.trim()) form.append("under", $("under").value.trim());
  if ($("since").value) form.append("since", $("since").value);
  if ($("until").value) form.append("until", $("until").value);
  if ($("all-copies").checked) form.append("all_copies", "true");
  setStatus("Searching…", "busy");
  $("search-button").disabled = true;
  try {
    render(await api("/api/search", { method: "POST", body: form }));
  } catch (e) {
    setStatus(e.message, "error");
  } finally {
    $("search-button").disabled = false;
  }
}

function baseName(path) {
  return path.split(/[\\/]/).pop() || path;
}

function mediaUrl(kind, hit) {
  const index = $("index").value;
  return `/${kind}/${encodeURIComponent(hit.id)}` + (index ? `?index=${encodeURIComponent(index)}` : "");
}

function render(doc) {
  const results = $("results");
  results.replaceChildren();
  renderReasoning(doc);
  if (doc.no_match) {
    setStatus(`No match: no result reached the minimum score ${$("min-score").value}.`, "no-match");
    return;
  }
  const ms = Math.round(doc.latency_ms.total);
  setStatus(`${doc.hits.length} result${doc.hits.length === 1 ? "" : "s"} in ${ms} ms (rerank: ${doc.rerank}).`);
  for (const hit of doc.hits) results.append(card(hit));
}

function card(hit) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card" + (hit.chosen ? " chosen" : "") + (hit.inspected ? " inspected" : "");
  button.dataset.id = hit.id;
  button.dataset.rank = hit.rank;
  button.title = [hit.source, ...(hit.copies || [])].join("\n");
  if (hit.image_path) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.loading = "lazy";
    img.alt = baseName(hit.source);
    img.src = mediaUrl("thumb", hit);
    button.append(img);
  } else {
    const text = document.createElement("p");
    text.className = "snippet";
    text.textContent = (hit.text || "").slice(0, 280);
    button.append(text);
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  const copies = (hit.copies || []).length;
  const marks =
    (hit.chosen ? " ★ answer" : "") +
    (hit.inspected ? " · inspected" : "") +
    (copies ? ` · +${copies} cop${copies === 1 ? "y" : "ies"}` : "");
  meta.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}${marks}`;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = baseName(hit.source);
  button.append(meta, name);
  button.addEventListener("click", () => openViewer(hit, button));
  item.append(button);
  return item;
}

const TAGS = /<inspection-index-start>(.*?)<inspection-index-end>|<answer>(.*?)<\/answer>/g;

function renderReasoning(doc) {
  // reason mode: the reasoner's text, its inspection requests and its answer marked; the cards of the inspected
  // candidates carry the mark too.
  const section = $("reasoning");
  section.hidden = !doc.reasoning;
  if (!doc.reasoning) return;
  const pre = $("reasoning-text");
  pre.replaceChildren();
  const text = doc.reasoning.trim();
  let last = 0;
  for (const match of text.matchAll(TAGS)) {
    pre.append(text.slice(last, match.index));
    const mark = document.createElement("mark");
    mark.className = match[1] !== undefined ? "inspection" : "answer";
    mark.textContent = match[1] !== undefined ? `inspect [${match[1].trim()}]` : `★ answer [${match[2].trim()}]`;
    pre.append(mark);
    last = match.index + match[0].length;
  }
  pre.append(text.slice(last));
  const inspected = doc.hits.filter((h) => h.inspected).map((h) => `#${h.rank} ${baseName(h.source)}`);
  let summary = "Inspected in detail: " + (inspected.length ? inspected.join(", ") : "none") + ".";
  if (doc.fallback) summary += ` The reasoner's output was not used (${doc.fallback}): coarse order.`;
  else if (doc.forced_answer) summary += " The reasoner stopped without an answer and was made to name one.";
  $("reasoning-inspected").textContent = summary;
}

function openViewer(hit, opener) {
  const viewer = $("viewer");
  const image = $("viewer-image");
  const text = $("viewer-text");
  image.hidden = !hit.image_path;
  text.hidden = !!hit.image_path;
  image.src = hit.image_path ? mediaUrl("image", hit) : "";
  image.alt = baseName(hit.source);
  text.textContent = hit.image_path ? "" : hit.text || "";
  $("viewer-path").textContent = hit.source;
  $("viewer-score").textContent = ` · #${hit.rank} · score ${hit.score.toFixed(3)} (coarse ${hit.coarse_score.toFixed(3)})`;
  viewer.returnFocusTo = opener;
  viewer.showModal();
  $("viewer-close").focus();
}

function setUp() {
  takeTokenFromUrl();
  loadInfo();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  $("image-button").addEventListener("click", () => $("image-input").click());
  $("image-input").addEventListener("change", () => {
    const file = $("image-input").files[0];
    if (file) {
      setImage(file);
      search();
    }
  });
  $("image-clear").addEventListener("click", () => {
    setImage(null);
    $("q").focus();
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = imageOf(event.dataTransfer && event.dataTransfer.items) || (event.dataTransfer && event.dataTransfer.files[0]);
    if (file) {
      setImage(file);
      search();
    }
  });
  document.addEventListener("paste", (event) => {
    const file = imageOf(event.clipboardData && event.clipboardData.items);
    if (file) {
      event.preventDefault();
      setImage(file);
      search();
    }
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (event.key === "/" && !typing && !$("viewer").open) {
      event.preventDefault();
      $("q").focus();
    }
  });
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer").addEventListener("close", () => {
    const opener = $("viewer").returnFocusTo;
    if (opener) opener.focus();
  });
}

setUp();
