// phototag web page: upload photos to POST /v1/tag, show the suggested tags with confidence bars, record accept /
// reject clicks through /v1/feedback, and collect the accepted tags as hashtags. Plain JS, no build step.
"use strict";

const state = { needsToken: false, feedback: false, photos: [], lang: "en", translations: {} };
const $ = (id) => document.getElementById(id);

function token() {
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem("phototag-token", value);
  return value || sessionStorage.getItem("phototag-token") || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    // Errors are RFC 9457 problem details: `title` names the kind, `detail` says what went wrong this time.
    if (response.status === 401) $("token-box").hidden = false;
    throw new Error((body && (body.detail || body.title)) || response.statusText);
  }
  return body;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

// Tags stay English in requests and feedback; only what is shown (and the hashtags) uses the chosen language.
function shown(tag) {
  return state.translations[tag] || tag;
}

async function setLanguage(code) {
  state.lang = code;
  state.translations = {};
  if (code !== "en") {
    try {
      state.translations = (await api("/v1/translations?lang=" + encodeURIComponent(code))).tags;
    } catch (err) {
      setStatus("Cannot load the " + code + " keywords: " + err.message, true);
    }
  }
  for (const photo of state.photos) if (photo.tags) renderTags(photo, photo.card, photo.tags);
  updateHashtags();
}

function hashtag(tag) {
  return "#" + tag.replace(/[^\p{L}\p{N}_]+/gu, "");
}

function updateHashtags() {
  const seen = new Set();
  for (const photo of state.photos) {
    for (const [tag, decision] of photo.decisions) if (decision === "accept") seen.add(hashtag(shown(tag)));
  }
  $("hashtags").value = [...seen].join(" ");
}

// The photo is stored once, on its first click; later clicks reuse the id.
function storedImageId(photo) {
  if (!photo.imageId) {
    const form = new FormData();
    form.append("file", photo.file, photo.file.name);
    photo.imageId = api("/v1/feedback/images", { method: "POST", body: form }).then((r) => r.image_id);
    photo.imageId.catch(() => { photo.imageId = null; });
  }
  return photo.imageId;
}

async function decide(photo, row, tag, score, clicked) {
  const current = photo.decisions.get(tag) || "clear";
  const decision = current === clicked ? "clear" : clicked;
  photo.decisions.set(tag, decision);
  row.classList.toggle("accepted", decision === "accept");
  row.classList.toggle("rejected", decision === "reject");
  row.dataset.decision = decision;
  updateHashtags();
  if (!state.feedback) return;
  row.dataset.saved = "pending";
  try {
    const imageId = await storedImageId(photo);
    const saved = await api("/v1/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: imageId, tag, decision, score }),
    });
    row.dataset.saved = String(saved.id);
  } catch (err) {
    row.dataset.saved = "error";
    setStatus("Could not save feedback: " + err.message, true);
  }
}

function renderTags(photo, card, tags) {
  const list = card.querySelector(".tags");
  list.textContent = "";
  if (!tags.length) list.textContent = "No tag scored above the threshold.";
  for (const { tag, score } of tags) {
    const row = document.createElement("div");
    row.className = "tag";
    row.dataset.tag = tag;
    const decided = photo.decisions.get(tag) || "clear";  // kept when a language change redraws the list
    row.classList.toggle("accepted", decided === "accept");
    row.classList.toggle("rejected", decided === "reject");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = shown(tag);
    name.title = tag;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.round(Math.max(0, Math.min(1, score)) * 100) + "%";
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = (score * 100).toFixed(0) + "%";
    const accept = document.createElement("button");
    accept.className = "accept";
    accept.type = "button";
    accept.title = "accept " + shown(tag);
    accept.textContent = "✓";
    accept.addEventListener("click", () => decide(photo, row, tag, score, "accept"));
    const reject = document.createElement("button");
    reject.className = "reject";
    reject.type = "button";
    reject.title = "reject " + shown(tag);
    reject.textContent = "✗";
    reject.addEventListener("click", () => decide(photo, row, tag, score, "reject"));
    row.append(name, bar, value, accept, reject);
    list.append(row);
  }
}

async function tagPhoto(file) {
  const photo = { file, decisions: new Map(), imageId: null };
  state.photos.push(photo);
  const card = document.createElement("article");
  card.className = "photo";
  const img = document.createElement("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  const body = document.createElement("div");
  const title = document.createElement("h3");
  title.textContent = file.name;
  const tags = document.createElement("div");
  tags.className = "tags";
  tags.textContent = "tagging…";
  body.append(title, tags);
  card.append(img, body);
  $("results").prepend(card);
  const form = new FormData();
  form.append("files", file, file.name);
  const topK = parseInt($("top-k").value, 10);
  const query = Number.isFinite(topK) && topK > 0 ? "?top_k=" + topK : "";
  try {
    // The answer names the model that spoke ({id, version, ...}) and holds one result per uploaded file.
    const answer = await api("/v1/tag" + query, { method: "POST", body: form });
    const [result] = answer.results;
    if (result.error) throw new Error(result.error.detail || result.error.title);
    card.dataset.model = answer.model.id;
    card.title = "tagged by " + answer.model.name + " (" + answer.model.version + ")";
    photo.tags = result.tags;
    photo.card = card;
    renderTags(photo, card, result.tags);
    card.dataset.state = "tagged";
  } catch (err) {
    tags.textContent = err.message;
    tags.className = "tags error";
    card.dataset.state = "error";
  }
}

async function handleFiles(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  if (!images.length) { setStatus("Those files are not images.", true); return; }
  setStatus(`Tagging ${images.length} photo(s)…`);
  await Promise.all(images.map(tagPhoto));
  setStatus(`Tagged ${images.length} photo(s).`);
}

async function init() {
  try {
    const config = await (await fetch("/config.json")).json();
    state.needsToken = config.needs_token;
    state.feedback = config.feedback;
    $("token-box").hidden = !config.needs_token;
    $("model").textContent = "model: " + config.model + (config.feedback ? "" : " (feedback off)");
    const select = $("lang");
    select.textContent = "";
    for (const [code, name] of Object.entries(config.languages || { en: "English" })) {
      const option = document.createElement("option");
      option.value = code;
      option.textContent = name;
      select.append(option);
    }
    const saved = localStorage.getItem("phototag-lang");
    select.value = saved && config.languages && saved in config.languages ? saved : config.lang || "en";
    select.addEventListener("change", () => {
      localStorage.setItem("phototag-lang", select.value);
      setLanguage(select.value);
    });
    if (select.value !== "en") await setLanguage(select.value);
  } catch (err) {
    setStatus("Cannot reach the server: " + err.message, true);
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    handleFiles(e.dataTransfer.files);
  });
  $("files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  $("copy").addEventListener("click", async () => {
    const text = $("hashtags").value;
    try {
      await navigator.clipboard.writeText(text);
    } catch (err) {
      $("hashtags").select();
      document.execCommand("copy");
    }
    $("copied").textContent = text ? "copied" : "nothing to copy";
  });
  document.body.dataset.ready = "true";
}

init();
