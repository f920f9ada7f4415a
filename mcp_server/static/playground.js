// The playground: one page over the server's own REST API (OpenAI's Images routes, streamed),
// no build step and no outside loads. State that outlives the page: the token (this tab) and
// the gallery (this browser).
"use strict";

const $ = (id) => document.getElementById(id);
const GALLERY_KEY = "diffusers-playground-gallery";
const GALLERY_SIZE = 24;
let models = [];
let running = null; // the AbortController of the drawing under way
let lastSeed = null;
let source = null; // {blob, width, height} of the image to edit

// --- Requests -------------------------------------------------------------------------------

function authHeaders() {
  const token = sessionStorage.getItem("token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function askToken() {
  const dialog = $("token-dialog");
  dialog.showModal();
  await new Promise((done) => dialog.addEventListener("close", done, { once: true }));
  sessionStorage.setItem("token", $("token").value.trim());
}

// fetch with the bearer token; a 401 asks for the token once and tries again.
async function call(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), ...authHeaders() },
    });
    if (response.status !== 401 || attempt > 0) return response;
    await askToken();
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error?.message || JSON.stringify(body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Server-sent events from a fetch body: calls onEvent(name, data) and onComment(text).
async function readEvents(response, onEvent, onComment) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) onComment(line.slice(1).trim());
        else if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// --- Models ---------------------------------------------------------------------------------

async function loadModels() {
  const response = await call("/v1/models");
  if (!response.ok) {
    $("status").textContent = `cannot list models: ${await errorText(response)}`;
    return;
  }
  models = (await response.json()).data;
  const select = $("model");
  select.replaceChildren(
    ...models.map((m) => new Option(`${m.id}${m.ready ? "" : " (not ready)"}`, m.id, m.default, m.default)),
  );
  const ready = models.filter((m) => m.ready).length;
  $("status").textContent = `${ready} of ${models.length} model(s) ready`;
  showModel();
}

function capabilities() {
  const model = models.find((m) => m.id === $("model").value);
  return model?.capabilities || {};
}

function showModel() {
  const caps = capabilities();
  const step = caps.size_multiple || 8;
  for (const [id, key] of [["width", "default_width"], ["height", "default_height"]]) {
    const input = $(id);
    Object.assign(input, { step, min: caps.min_side || step, value: caps[key] || 512 });
    input.title = `A multiple of ${step}; width x height at most ${caps.max_pixels || "?"} pixels`;
  }
  Object.assign($("steps"), { value: caps.default_steps || "", max: caps.max_steps || 100 });
  $("guidance").value = caps.default_guidance_scale ?? "";
  $("count").max = caps.max_images_per_request || 4;
  const speeds = Object.entries(caps.speeds || {});
  $("speed").replaceChildren(
    ...speeds.map(([name, how]) => Object.assign(new Option(name, name), { title: how })),
  );
  $("speed").value = caps.default_speed || "";
  $("speed").parentElement.hidden = speeds.length === 0;
  $("examples").replaceChildren(
    ...(caps.example_prompts || []).map((text) => {
      const chip = Object.assign(document.createElement("button"), { type: "button", textContent: text });
      chip.addEventListener("click", () => { $("prompt").value = text; $("prompt").focus(); });
      return chip;
    }),
  );
  showVocabulary(caps.vocabulary);
  showLoras(caps.loras || [], caps.lora_scale_range || [-2, 2]);
  $("negative").disabled = caps.supports_negative_prompt === false;
}

// One row per adapter: tick it to use it, at its scale (1 as trained).
function showLoras(loras, [least, most]) {
  $("lora-box").hidden = loras.length === 0;
  $("loras").replaceChildren(
    ...loras.map(({ name, description }) => {
      const row = Object.assign(document.createElement("label"), { className: "lora" });
      const use = Object.assign(document.createElement("input"), { type: "checkbox", value: name });
      const scale = Object.assign(document.createElement("input"), {
        type: "number", className: "lora-scale", min: least, max: most, step: 0.1, value: 1,
      });
      scale.setAttribute("aria-label", `${name} scale`);
      const about = Object.assign(document.createElement("small"), { textContent: description || "" });
      row.append(use, ` ${name} `, scale, about);
      return row;
    }),
  );
}

function chosenLoras() {
  return [...$("loras").querySelectorAll(".lora")]
    .filter((row) => row.querySelector("input[type=checkbox]").checked)
    .map((row) => ({
      name: row.querySelector("input[type=checkbox]").value,
      scale: Number(row.querySelector(".lora-scale").value),
    }));
}

function showVocabulary(vocabulary) {
  $("vocabulary-box").hidden = !vocabulary;
  if (!vocabulary) return;
  const list = $("vocabulary");
  list.replaceChildren();
  for (const [kind, words] of Object.entries(vocabulary)) {
    const flat = Array.isArray(words) ? words : Object.values(words).flat();
    list.append(
      Object.assign(document.createElement("dt"), { textContent: kind }),
      Object.assign(document.createElement("dd"), { textContent: flat.join(", ") }),
    );
  }
}

// --- Drawing --------------------------------------------------------------------------------

function settings() {
  const seed = $("random-seed").checked
    ? Math.floor(Math.random() * 2 ** 32)
    : Number($("seed").value || 0);
  $("seed").value = seed;
  const loras = chosenLoras();
  const fields = {
    prompt: $("prompt").value.trim(),
    model: $("model").value || undefined,
    size: `${$("width").value}x${$("height").value}`,
    n: Number($("count").value || 1),
    seed,
    num_inference_steps: $("steps").value ? Number($("steps").value) : undefined,
    guidance_scale: $("guidance").value !== "" ? Number($("guidance").value) : undefined,
    negative_prompt: $("negative").value.trim() || undefined,
    speed: $("speed").parentElement.hidden ? undefined : $("speed").value || undefined,
    loras: loras.length ? loras : undefined,
    stream: true,
    partial_images: 2,
  };
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
}

async function maskBlob() {
  const painted = $("mask");
  const pixels = painted.getContext("2d").getImageData(0, 0, painted.width, painted.height).data;
  if (!pixels.some((value, i) => i % 4 === 3 && value > 0)) return null; // nothing painted
  // White where painted, black elsewhere, at the source's own size.
  const mask = Object.assign(document.createElement("canvas"), { width: source.width, height: source.height });
  const context = mask.getContext("2d");
  context.fillStyle = "black";
  context.fillRect(0, 0, mask.width, mask.height);
  context.globalCompositeOperation = "lighter";
  context.drawImage(painted, 0, 0, mask.width, mask.height);
  return await new Promise((done) => mask.toBlob(done, "image/png"));
}

async function request(fields) {
  if (!source) {
    return call("/v1/images/generations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(fields),
      signal: running.signal,
    });
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    // A form carries a list as its JSON text.
    form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
  }
  form.append("image", source.blob, "source.png");
  form.append("strength", $("strength").value);
  const mask = await maskBlob();
  if (mask) form.append("mask", mask, "mask.png");
  return call("/v1/images/edits", { method: "POST", body: form, signal: running.signal });
}

async function draw(overrides = {}) {
  if (running) return;
  const fields = { ...settings(), ...overrides };
  if (!fields.prompt) { $("message").textContent = "Write a prompt first."; return; }
  running = new AbortController();
  setBusy(true);
  const started = performance.now();
  const progress = $("progress");
  const partials = new Map();
  const finished = [];
  const stored = []; // the server's details of each image, sent just before it
  try {
    const response = await request(fields);
    if (!response.ok) throw new Error(await errorText(response));
    $("results").replaceChildren();
    await readEvents(
      response,
      (name, data) => {
        if (name === "error") throw new Error(data.error?.message || JSON.stringify(data));
        if (name.endsWith(".partial_image")) {
          // The k-th partial with a given index is image k's (images come in order).
          const count = partials.get(data.partial_image_index) || 0;
          partials.set(data.partial_image_index, count + 1);
          showPartial(count, data);
        } else if (name.endsWith(".completed")) {
          const image = { ...data, ...(stored[finished.length] || {}) };
          finished.push(image);
          showResult(finished.length - 1, image, fields, performance.now() - started);
        }
      },
      (comment) => {
        if (comment.startsWith("stored ")) { stored.push(JSON.parse(comment.slice(7))); return; }
        const match = /step (\d+)\/(\d+)/.exec(comment);
        if (!match) return;
        progress.max = Number(match[2]);
        progress.value = Number(match[1]);
        $("message").textContent = `step ${match[1]} of ${match[2]}`;
      },
    );
    $("message").textContent = `${finished.length} image(s) in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    if (finished.length) lastSeed = finished[0].seed ?? fields.seed;
  } catch (error) {
    $("message").textContent =
      error.name === "AbortError" ? "Cancelled: the server stopped drawing." : `Failed: ${error.message}`;
  } finally {
    running = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("draw").disabled = busy;
  $("cancel").disabled = !busy;
  $("progress").hidden = !busy;
  if (busy) { $("progress").value = 0; $("message").textContent = "starting…"; }
}

function figureFor(index) {
  const results = $("results");
  let figure = results.children[index];
  if (!figure) {
    figure = document.createElement("figure");
    figure.append(document.createElement("img"), document.createElement("figcaption"));
    results.append(figure);
  }
  return figure;
}

function showPartial(index, data) {
  const figure = figureFor(index);
  figure.querySelector("img").src = `data:image/${data.output_format};base64,${data.b64_json}`;
  figure.querySelector("figcaption").textContent = `forming… (partial ${data.partial_image_index + 1})`;
}

function showResult(index, data, fields, elapsed) {
  const figure = figureFor(index);
  const image = figure.querySelector("img");
  image.src = `data:image/${data.output_format};base64,${data.b64_json}`;
  image.alt = fields.prompt;
  const timing = data.timings?.total_ms ? `${(data.timings.total_ms / 1000).toFixed(1)} s on the runtime, ` : "";
  figure.querySelector("figcaption").textContent =
    `${data.size}, seed ${data.seed}, ${data.num_inference_steps ?? "?"} steps, ` +
    `guidance ${data.guidance_scale ?? "?"}, ${data.model} (${timing}${(elapsed / 1000).toFixed(1)} s here)`;
  figure.querySelector(".row")?.remove();
  figure.append(actions(data, fields));
  remember({ url: data.url, prompt: fields.prompt, seed: data.seed, size: data.size,
    model: data.model, expires_at: data.expires_at, format: data.output_format });
}

function button(text, onClick) {
  const element = Object.assign(document.createElement("button"), { type: "button", textContent: text });
  element.addEventListener("click", onClick);
  return element;
}

function actions(data, fields) {
  const row = Object.assign(document.createElement("div"), { className: "row" });
  const download = Object.assign(document.createElement("a"), {
    href: `data:image/${data.output_format};base64,${data.b64_json}`,
    download: `${fields.prompt.slice(0, 40).replace(/[^a-z0-9]+/gi, "-")}-${data.seed}.${data.output_format}`,
    textContent: "download",
  });
  row.append(
    download,
    button("again with this seed", () => draw({ seed: data.seed, n: 1 })),
    button("variations", () => draw({ seed: Math.floor(Math.random() * 2 ** 32), n: Number($("count").max) || 4 })),
    button("edit", async () => {
      const blob = await (await fetch(`data:image/${data.output_format};base64,${data.b64_json}`)).blob();
      await useSource(blob);
    }),
  );
  return row;
}

// --- Editing --------------------------------------------------------------------------------

async function useSource(blob) {
  const bitmap = await createImageBitmap(blob);
  source = { blob, width: bitmap.width, height: bitmap.height };
  $("source").src = URL.createObjectURL(blob);
  const mask = $("mask");
  Object.assign(mask, { width: bitmap.width, height: bitmap.height });
  $("mask-area").hidden = false;
  $("edit-box").scrollIntoView({ block: "nearest" });
}

function dropSource() {
  source = null;
  $("mask-area").hidden = true;
  $("source-file").value = "";
}

function paintable(canvas) {
  const context = canvas.getContext("2d");
  let down = false;
  const paint = (event) => {
    if (!down) return;
    const box = canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * canvas.width;
    const y = ((event.clientY - box.top) / box.height) * canvas.height;
    const radius = (Number($("brush").value) / box.width) * canvas.width / 2;
    context.fillStyle = "white";
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.fill();
  };
  canvas.addEventListener("pointerdown", (event) => { down = true; canvas.setPointerCapture(event.pointerId); paint(event); });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => { down = false; });
}

// --- Gallery --------------------------------------------------------------------------------

function remember(entry) {
  if (!entry.url) return;
  const gallery = JSON.parse(localStorage.getItem(GALLERY_KEY) || "[]");
  gallery.unshift({ ...entry, created: Date.now() });
  localStorage.setItem(GALLERY_KEY, JSON.stringify(gallery.slice(0, GALLERY_SIZE)));
  showGallery();
}

async function showGallery() {
  const gallery = JSON.parse(localStorage.getItem(GALLERY_KEY) || "[]");
  const box = $("gallery");
  box.replaceChildren();
  for (const entry of gallery) {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.alt = entry.prompt;
    const caption = document.createElement("figcaption");
    caption.textContent = `${entry.prompt} (seed ${entry.seed})`;
    figure.append(image, caption);
    box.append(figure);
    const expired = entry.expires_at && entry.expires_at * 1000 < Date.now();
    const response = expired ? null : await call(entry.url);
    if (response?.ok) {
      const blob = await response.blob();
      image.src = URL.createObjectURL(blob);
      figure.append(button("edit", () => useSource(blob)));
    } else {
      figure.classList.add("expired");
      caption.textContent += ": expired on the server";
    }
  }
  if (gallery[0]?.expires_at) {
    const minutes = Math.round((gallery[0].expires_at * 1000 - gallery[0].created) / 60000);
    $("gallery-note").textContent =
      `Images stay on the server for about ${minutes} minute(s) after they are drawn, then expire.`;
  }
}

// --- Wiring ---------------------------------------------------------------------------------

$("form").addEventListener("submit", (event) => { event.preventDefault(); draw(); });
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); draw(); }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running) running.abort();
});
$("cancel").addEventListener("click", () => running?.abort());
$("model").addEventListener("change", showModel);
$("random-seed").addEventListener("change", () => { $("seed").disabled = $("random-seed").checked; });
$("reuse-seed").addEventListener("click", () => {
  if (lastSeed === null) return;
  $("random-seed").checked = false;
  $("seed").disabled = false;
  $("seed").value = lastSeed;
});
$("source-file").addEventListener("change", () => {
  const file = $("source-file").files[0];
  if (file) useSource(file);
});
$("clear-mask").addEventListener("click", () => {
  const mask = $("mask");
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
});
$("drop-source").addEventListener("click", dropSource);
$("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
paintable($("mask"));
loadModels().then(showGallery);
