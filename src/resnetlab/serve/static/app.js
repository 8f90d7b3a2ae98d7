// The prediction page: pick or drop images, POST them to /predict, draw the top-k as bars.
"use strict";

const els = {
  input: document.getElementById("file-input"),
  zone: document.getElementById("drop-zone"),
  results: document.getElementById("results"),
  error: document.getElementById("error"),
  info: document.getElementById("model-info"),
  report: document.getElementById("report-link"),
  template: document.getElementById("result-template"),
};
let limits = { max_upload_mb: 10, max_files: 16, top_k: 5 };

function showError(message) {
  els.error.textContent = message;
  els.error.hidden = !message;
}

async function loadHealth() {
  try {
    const response = await fetch("/health");
    const health = await response.json();
    limits = health;
    const size = health.input_size.slice(1).join("×");
    els.info.textContent = `${health.model} · ${health.classes.length} classes · ${size} px · ${health.backend}`;
    els.report.hidden = !health.report;
  } catch (err) {
    els.info.textContent = "model unavailable";
  }
}

function makeCard(file) {
  const card = els.template.content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = file.name;
  card.querySelector(".status").textContent = "classifying…";
  const img = card.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  img.onload = () => {
    if (img.naturalWidth < 96) img.classList.add("pixelated");
    URL.revokeObjectURL(img.src);
  };
  img.onerror = () => card.querySelector(".thumb").classList.add("no-preview");
  els.results.prepend(card);
  return card;
}

function drawBars(card, topK) {
  const list = card.querySelector(".bars");
  list.replaceChildren();
  topK.forEach((entry, rank) => {
    const row = document.createElement("li");
    row.className = "bar-row" + (rank === 0 ? " best" : "");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = entry.class;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = (entry.probability * 100).toFixed(1) + "%";
    row.append(label, track, value);
    list.appendChild(row);
    // Set the width on the next frame so the CSS transition animates from zero.
    requestAnimationFrame(() => { fill.style.width = Math.max(0.5, entry.probability * 100) + "%"; });
  });
  card.querySelector(".status").textContent = "";
  card.classList.add("done");
}

function showHeatmap(card, prediction) {
  if (!prediction.heatmap) return;  // an ONNX model has no heatmap
  const holder = card.querySelector(".heatmap-thumb");
  const img = holder.querySelector("img");
  img.src = prediction.heatmap;
  img.alt = `heatmap: where the model saw ${prediction.top_k[0].class}`;
  img.title = img.alt;
  holder.hidden = false;
  card.classList.add("with-heatmap");
}

async function classify(files) {
  showError("");
  const images = Array.from(files).slice(0, limits.max_files || 16);
  if (!images.length) return;
  for (const file of images) {
    const card = makeCard(file);
    if (file.size > limits.max_upload_mb * 1024 * 1024) {
      card.classList.add("failed");
      card.querySelector(".status").textContent = `larger than ${limits.max_upload_mb} MB`;
      continue;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      // heatmap=1: the server adds where the model looked (CAM/Grad-CAM overlay) as a data: URI.
      const response = await fetch("/predict?heatmap=1", { method: "POST", body: form });
      const payload = await response.json().catch(() => ({ detail: response.statusText }));
      if (!response.ok) throw new Error(payload.detail || `HTTP ${response.status}`);
      drawBars(card, payload.predictions[0].top_k);
      showHeatmap(card, payload.predictions[0]);
    } catch (err) {
      card.classList.add("failed");
      card.querySelector(".status").textContent = err.message;
    }
  }
}

els.input.addEventListener("change", () => {
  classify(els.input.files);
  els.input.value = "";  // picking the same file again should classify it again
});
["dragenter", "dragover"].forEach((type) => els.zone.addEventListener(type, (event) => {
  event.preventDefault();
  els.zone.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => els.zone.addEventListener(type, (event) => {
  event.preventDefault();
  els.zone.classList.remove("over");
}));
els.zone.addEventListener("drop", (event) => classify(event.dataTransfer.files));
els.zone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); els.input.click(); }
});
// Pasting an image from the clipboard works too.
document.addEventListener("paste", (event) => {
  const files = Array.from(event.clipboardData.files || []);
  if (files.length) classify(files);
});

loadHealth();
