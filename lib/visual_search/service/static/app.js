// app.js: everything the search page does, in plain JavaScript (no framework, no build step).
//
// Read it top to bottom:
//   1. the page's state and small helpers;
//   2. the query canvas: showing the query image and dragging a crop box on it;
//   3. talking to the server: /random, /search, /search/text, /clicks, /stats;
//   4. showing the results;
//   5. wiring the buttons.
//
// <body data-state> says what the page is doing: "idle" (a new query is loading or loaded, not
// searched yet), "searching", "done" (results are shown) or "error" (#error says why). <body data-searches>
// counts the searches that finished, so a test can wait for the *next* one.
"use strict";

// ---------------------------------------------------------------- 1. state and helpers

const CANVAS_SIZE = 280; // the query is scaled to fit a 280 x 280 px square (a 28 x 28 image: 10x)

const $ = (id) => document.getElementById(id);
const canvas = $("query-canvas");
const ctx = canvas.getContext("2d");

const state = {
  blob: null, // the query as it will be uploaded (a File from the picker, or a Blob we fetched)
  image: null, // the same image decoded (an ImageBitmap), or null if the browser cannot decode it
  box: null, // the crop in *image* pixels {left, top, right, bottom}, right/bottom exclusive; null = whole image
  dragStart: null, // while the mouse button is down: where the drag started, in image pixels
  busy: false, // an action (loading a query, a search, a click on a result) is under way: ignore further clicks
};

// An anonymous, random id for this browser, kept in localStorage so that the server's logs
// can tell one user's searches and clicks from another's. Nothing else about the user is sent.
const USER = (() => {
  const key = "visual-search-user";
  const fresh = () => (crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(36).slice(2));
  try {
    let id = localStorage.getItem(key);
    if (!id) {
      id = fresh();
      localStorage.setItem(key, id);
    }
    return id;
  } catch {
    return fresh(); // storage is switched off (private mode, file://): an id for this visit only
  }
})();

function setState(name) {
  document.body.dataset.state = name;
}

function showError(message) {
  $("error").textContent = message;
}

const clamp = (value, low, high) => Math.min(Math.max(value, low), high);

// The server answers errors with JSON {"detail": "..."}. FastAPI's own validation errors
// (422) put a list of {loc, msg} objects in "detail" instead; show their messages.
async function errorDetail(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // not JSON (a proxy's error page, say): fall back to the status line
  }
  if (Array.isArray(detail)) {
    detail = detail.map((d) => (d.loc ? `${d.loc.join(".")}: ${d.msg}` : d.msg || JSON.stringify(d))).join("; ");
  }
  return detail ? `${detail} (HTTP ${response.status})` : `HTTP ${response.status} ${response.statusText}`;
}

// fetch(), but a 4xx/5xx answer becomes an Error carrying the server's detail.
async function request(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {
    throw new Error(await errorDetail(response));
  }
  return response;
}

// ---------------------------------------------------------------- 2. the query canvas

// Make `blob` the query: decode it, forget the old crop, draw it.
async function loadQuery(blob) {
  if (!(blob instanceof File)) $("file").value = ""; // not from the picker: it no longer names the query
  state.blob = blob;
  state.box = null;
  state.image = null;
  try {
    state.image = await createImageBitmap(blob);
  } catch {
    // The browser cannot decode it (not an image). Keep it anyway: Search still sends it,
    // and the server's answer says what is wrong with it.
  }
  drawQuery();
}

// Draw the query image scaled up, and the crop box over it.
function drawQuery() {
  const img = state.image;
  if (!img) {
    canvas.width = canvas.height = CANVAS_SIZE; // resizing also clears the canvas
    ctx.fillStyle = "#888";
    ctx.font = "14px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(state.blob ? "The browser cannot show this file." : "No query image yet.", CANVAS_SIZE / 2, CANVAS_SIZE / 2);
    updateBoxLabel();
    return;
  }
  const scale = Math.min(CANVAS_SIZE / img.width, CANVAS_SIZE / img.height);
  canvas.width = Math.max(1, Math.round(img.width * scale));
  canvas.height = Math.max(1, Math.round(img.height * scale));
  // Scaling up, show the pixels as sharp squares (no blur: the model sees pixels, so should you);
  // scaling a big photo down, let the browser smooth it. (Resizing the canvas resets this flag.)
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);

  if (state.box) {
    // The box in canvas pixels: image pixels times the scale of each axis.
    const sx = canvas.width / img.width;
    const sy = canvas.height / img.height;
    const { left, top, right, bottom } = state.box;
    const x = left * sx, y = top * sy, w = (right - left) * sx, h = (bottom - top) * sy;
    // Dim what the crop leaves out: the whole canvas minus the box ("evenodd" cuts the hole).
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
    ctx.beginPath();
    ctx.rect(0, 0, canvas.width, canvas.height);
    ctx.rect(x, y, w, h);
    ctx.fill("evenodd");
    ctx.strokeStyle = "#ffcc00";
    ctx.lineWidth = 2;
    ctx.strokeRect(x + 1, y + 1, w - 2, h - 2); // inside the box, so no edge is cut off
  }
  updateBoxLabel();
}

// Say what will be searched. data-box holds the box as the server receives it ("" = no crop).
function updateBoxLabel() {
  const label = $("box-label");
  const img = state.image;
  if (state.box) {
    const { left, top, right, bottom } = state.box;
    label.textContent = `Crop: left ${left}, top ${top}, right ${right}, bottom ${bottom} ` +
      `(${right - left} x ${bottom - top} px of ${img.width} x ${img.height}).`;
    label.dataset.box = [left, top, right, bottom].join(",");
  } else {
    label.textContent = img ? `No crop: the whole ${img.width} x ${img.height} image is the query.` : "No crop.";
    label.dataset.box = "";
  }
}

// Where a mouse event falls, in pixels of the *uploaded image* (not of the screen):
// the canvas may be shown at any size, so go through its on-screen rectangle.
function toImagePixels(event) {
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * state.image.width;
  const y = ((event.clientY - rect.top) / rect.height) * state.image.height;
  return { x: clamp(x, 0, state.image.width), y: clamp(y, 0, state.image.height) };
}

// The box between two points, rounded to whole pixels and kept inside the image;
// null when it is empty (a plain click, or a drag along one edge).
function boxBetween(a, b) {
  const W = state.image.width, H = state.image.height;
  const left = clamp(Math.round(Math.min(a.x, b.x)), 0, W);
  const right = clamp(Math.round(Math.max(a.x, b.x)), 0, W);
  const top = clamp(Math.round(Math.min(a.y, b.y)), 0, H);
  const bottom = clamp(Math.round(Math.max(a.y, b.y)), 0, H);
  return right - left >= 1 && bottom - top >= 1 ? { left, top, right, bottom } : null;
}

// Drag to crop. Pointer events cover the mouse, a pen and a finger alike; capturing the
// pointer keeps the drag going when it leaves the canvas (the box is clamped to the image).
canvas.addEventListener("pointerdown", (event) => {
  if (!state.image || state.busy || event.button !== 0) return;
  canvas.setPointerCapture(event.pointerId);
  state.dragStart = toImagePixels(event);
  state.box = null;
  drawQuery();
});

canvas.addEventListener("pointermove", (event) => {
  if (!state.dragStart) return;
  state.box = boxBetween(state.dragStart, toImagePixels(event));
  drawQuery();
});

canvas.addEventListener("pointerup", (event) => {
  if (!state.dragStart) return;
  state.box = boxBetween(state.dragStart, toImagePixels(event));
  state.dragStart = null;
  drawQuery();
});

canvas.addEventListener("pointercancel", () => {
  state.dragStart = null;
});

// ---------------------------------------------------------------- 3. talking to the server

// Run one user action with the controls disabled and further clicks ignored, so that two
// actions never interleave. The page is in state `during` meanwhile and `after` once it
// succeeds; if it fails, #error says why and the page is in "error".
async function act(action, during, after) {
  if (state.busy) return;
  state.busy = true;
  setState(during);
  setControlsDisabled(true);
  try {
    await action();
    showError("");
    setState(after);
  } catch (err) {
    showError(err.message);
    setState("error");
  } finally {
    state.busy = false;
    setControlsDisabled(false);
  }
}

function setControlsDisabled(disabled) {
  for (const id of ["file", "random", "clear-crop", "k", "search", "text-query", "search-text"]) {
    $(id).disabled = disabled;
  }
  $("results").classList.toggle("busy", disabled);
}

// POST /search with the current query; show what comes back.
async function runSearch() {
  if (!state.blob) {
    throw new Error("Choose an image file or a random gallery image first.");
  }
  const form = new FormData();
  form.append("image", state.blob, state.blob.name || "query.png");
  if (state.box) {
    const { left, top, right, bottom } = state.box;
    form.append("box", `${left},${top},${right},${bottom}`);
  }
  const k = $("k").value.trim();
  if (k) form.append("k", k); // left empty: the server's default; out of range: the server says so
  form.append("user", USER);
  await searchAndShow("/search", { method: "POST", body: form });
}

// Send one search (image or text: both answer the same shape) and show its results.
async function searchAndShow(url, options) {
  let data;
  try {
    data = await (await request(url, options)).json();
  } catch (err) {
    clearResults(); // the results shown belong to an earlier query: do not let them pass for this one's
    throw err;
  }
  showResults(data);
  document.body.dataset.searches = Number(document.body.dataset.searches) + 1;
}

// POST /search/text with the words typed: the same index, rules and results as an image search
// (chapter 11's miniature CLIP), offered only when the server has a text encoder.
async function runTextSearch() {
  const query = $("text-query").value.trim();
  if (!query) {
    throw new Error("Type a description first, for example \"a dark ankle boot\".");
  }
  const body = { query, user: USER };
  const k = $("k").value.trim();
  if (k) body.k = Number(k); // the same k box as the image search; the server checks its range
  await searchAndShow("/search/text", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

// Show the text box if the server can answer text queries. The page works without it, so a
// failed /stats only leaves the box hidden.
async function offerTextSearch() {
  try {
    const stats = await (await request("/stats")).json();
    $("text-controls").hidden = !stats.text_search;
  } catch {
    $("text-controls").hidden = true;
  }
}

// A click on a result: log the click, then search for more like the clicked image.
function moreLikeThis(queryId, result) {
  return act(async () => {
    // 1. Tell the server which result of which query was clicked, and at which rank. Wait
    //    for it: the click is then stored before the next query is made.
    await request("/clicks", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query_id: queryId, image_id: result.id, rank: result.rank }),
    });
    // 2. The clicked image becomes the query (as a Blob, so it can be uploaded) ...
    await loadQuery(await (await request(result.url)).blob());
    // 3. ... and we search with it.
    await runSearch();
  }, "searching", "done");
}

// A random gallery image as the query (not searched yet: press Search).
async function loadRandomQuery() {
  const { url } = await (await request("/random")).json();
  await loadQuery(await (await request(url)).blob());
}

// ---------------------------------------------------------------- 4. the results

function clearResults() {
  $("results").replaceChildren();
  delete $("results").dataset.queryId;
  $("status").textContent = "";
}

function showResults(data) {
  clearResults(); // forget the previous results
  const results = $("results");
  results.dataset.queryId = data.query_id;
  for (const result of data.results) {
    // Each result is a button (so the keyboard can reach it) carrying its id and rank.
    const card = document.createElement("button");
    card.type = "button";
    card.className = "result";
    card.dataset.id = result.id;
    card.dataset.rank = result.rank;
    card.title = `Image ${result.id}: click to search for more like this`;

    const img = document.createElement("img");
    img.src = result.url;
    img.alt = `Gallery image ${result.id}`;

    const caption = document.createElement("span");
    caption.className = "caption";
    const rank = document.createElement("strong");
    rank.textContent = `#${result.rank}`;
    caption.append(rank, ` ${result.score.toFixed(3)}`);
    caption.title = "rank and score (higher is more similar)";

    card.append(img, caption);
    card.addEventListener("click", () => moreLikeThis(data.query_id, result));
    results.append(card);
  }
  showStatus(data);
}

// One line each: how many results, which model, where the time went, what the rules dropped.
function showStatus(data) {
  const timing = Object.entries(data.timing_ms || {})
    .map(([stage, ms]) => `${stage} ${Number(ms).toFixed(1)} ms`)
    .join(", ");
  const dropped = Object.entries(data.dropped || {})
    .map(([rule, count]) => `${rule}: ${count}`)
    .join(", ");
  $("status").textContent = [
    `${data.results.length} results (query ${data.query_id})`,
    `Model: ${data.model_version}`,
    `Time: ${timing || "not reported"}`,
    `Dropped: ${dropped || "none"}`,
  ].join("\n");
}

// ---------------------------------------------------------------- 5. wiring

// A new query is "idle" while it loads and after: it is not searched until Search is pressed.
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) act(() => loadQuery(file), "idle", "idle");
});

$("random").addEventListener("click", () => act(loadRandomQuery, "idle", "idle"));

$("clear-crop").addEventListener("click", () => {
  state.box = null;
  drawQuery();
});

const search = () => act(runSearch, "searching", "done");
$("search").addEventListener("click", search);
$("k").addEventListener("keydown", (event) => {
  if (event.key === "Enter") search(); // Enter in the k box searches too
});

const searchText = () => act(runTextSearch, "searching", "done");
$("search-text").addEventListener("click", searchText);
$("text-query").addEventListener("keydown", (event) => {
  if (event.key === "Enter") searchText();
});

drawQuery(); // the empty canvas, with its hint
offerTextSearch();
