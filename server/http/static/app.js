// gamjeong web page: POST /v1/classify for the text box, WS /v1/chat for the chat pane. No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
// The seven labels in id order; replaced by GET /v1/info's list once it answers (labels are defined once, server-side).
let labels = [
  { id: 0, name: "joy", name_ko: "기쁨" }, { id: 1, name: "sadness", name_ko: "슬픔" },
  { id: 2, name: "anger", name_ko: "분노" }, { id: 3, name: "fear", name_ko: "공포" },
  { id: 4, name: "surprise", name_ko: "놀람" }, { id: 5, name: "disgust", name_ko: "혐오" },
  { id: 6, name: "neutral", name_ko: "중립" },
];
let token = sessionStorage.getItem("gamjeong-token") || "";
const color = (name) => `var(--${name}, var(--neutral))`;
const pct = (p) => `${(p * 100).toFixed(1)}%`;
const ms = (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`;

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) $("auth").hidden = false;
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// --- model info ---------------------------------------------------------------------------------------------------
async function loadInfo() {
  try {
    const info = await api("/v1/info");
    labels = info.labels;
    $("model-name").textContent = `모델 ${info.model_name}`;
    $("model-backend").textContent = `${info.backend} · ${info.execution_provider}`;
    $("model-backend").hidden = false;
    $("model-untrained").hidden = info.untrained !== true;
    const quality = $("model-quality");
    if (info.untrained === false && info.macro_f1 != null) {
      // Say which model scored it and on which set: a PyTorch figure is not the served int8 model's.
      const scored = [info.quality_backend, info.quality_evaluated_on].filter(Boolean).join(", ");
      const native = (info.quality_heldout || {})["native yardstick"];
      quality.textContent =
        `macro-F1 ${info.macro_f1.toFixed(3)}` +
        (scored ? ` · ${scored}` : "") +
        (native ? ` · native Korean ${Number(native.macro_f1).toFixed(3)}` : "");
      const sets = Object.entries(info.quality_heldout || {}).map(
        ([name, set]) => `${name}: macro-F1 ${Number(set.macro_f1).toFixed(3)} (${set.texts}문장)`,
      );
      quality.title = [
        `모델 자체 평가: 정확도 ${info.accuracy != null ? (info.accuracy * 100).toFixed(1) + "%" : "?"}`,
        ...sets,
      ].join("\n");
      quality.className = "chip good";
      quality.hidden = false;
    } else if (info.untrained == null) {
      quality.textContent = "평가 기록 없음 · no evaluation";  // unknown: neither praised nor flagged
      quality.className = "chip";
      quality.hidden = false;
    }
    renderBars(null);
  } catch (error) {
    $("model-name").textContent = error.status === 503 ? "모델을 불러오는 중… 잠시 후 다시 시도해요" : `모델 정보 없음 (${error.message})`;
    setTimeout(loadInfo, 2000);
  }
}

// --- classify -------------------------------------------------------------------------------------------------------
function renderBars(result) {
  const list = $("bars");
  list.replaceChildren();
  for (const label of labels) {
    const p = result ? result.scores[label.name] || 0 : 0;
    const item = document.createElement("li");
    item.className = "bar" + (result && result.label === label.name ? " top" : "");
    item.dataset.label = label.name;
    item.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>`;
    item.querySelector(".name").textContent = label.name_ko;
    const small = document.createElement("small");
    small.textContent = label.name;
    item.querySelector(".name").append(small);
    const fill = item.querySelector(".fill");
    fill.style.background = color(label.name);
    fill.style.width = "0%";
    item.querySelector(".pct").textContent = result ? pct(p) : "–";
    list.append(item);
    requestAnimationFrame(() => { fill.style.width = `${(p * 100).toFixed(2)}%`; });
  }
}

async function classify() {
  const text = $("text").value.trim();
  if (!text) { $("text").focus(); return; }
  const button = $("classify");
  button.disabled = true;
  $("classify-error").hidden = true;
  const started = performance.now();
  try {
    const body = await api("/v1/classify", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ texts: [text] }),
    });
    const roundTrip = performance.now() - started;
    const result = body.results[0];
    const top = labels.find((l) => l.name === result.label) || { name: result.label, name_ko: result.label_ko };
    $("top-dot").style.background = color(top.name);
    $("top-ko").textContent = top.name_ko;
    $("top-en").textContent = top.name;
    $("top-score").textContent = pct(result.score);
    renderBars(result);
    const t = result.timing;
    $("timing").textContent =
      `서버 처리 ${ms(body.timing.total_ms)} (토큰화 ${ms(t.tokenization_ms)} · 대기 ${ms(t.queue_ms)} · ` +
      `추론 ${ms(t.inference_ms)}, 토큰 ${t.num_tokens}개${result.truncated ? ", 잘림" : ""}) · 왕복 ${ms(roundTrip)}`;
    $("result").hidden = false;
  } catch (error) {
    $("classify-error").textContent = error.message;
    $("classify-error").hidden = false;
  } finally {
    button.disabled = false;
  }
}

// --- chat -----------------------------------------------------------------------------------------------------------
let socket = null;
let nextId = 1;
let retryMs = 500;
const pending = new Map(); // id -> tag element waiting for its reply

function setStatus(text, kind) {
  $("chat-status").textContent = text;
  $("chat-status").className = `status ${kind || ""}`;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/v1/chat`);
  socket.onopen = () => {
    retryMs = 500;
    // Browsers cannot set headers on a WebSocket: the token goes in a first message.
    if (token) socket.send(JSON.stringify({ type: "auth", token }));
    setStatus("연결됨", "on");
  };
  socket.onmessage = (event) => onReply(JSON.parse(event.data));
  socket.onclose = (event) => {
    setStatus("연결 끊김 · 다시 연결 중…", "off");
    if (event.code === 1008) $("auth").hidden = false;
    for (const tag of pending.values()) markFailed(tag, "연결 끊김");
    pending.clear();
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  };
}

function markFailed(tag, why) {
  tag.className = "tag failed";
  tag.textContent = why;
}

function onReply(reply) {
  if (reply.type === "auth") return;
  const tag = reply.id != null ? pending.get(reply.id) : undefined;
  if (!tag) {
    if (reply.error) notice(reply.error.message);
    return;
  }
  pending.delete(reply.id);
  if (reply.error) { markFailed(tag, reply.error.message); return; }
  const result = reply.result;
  tag.className = "tag";
  tag.dataset.label = result.label;
  tag.style.background = color(result.label);
  tag.textContent = `${result.label_ko} `;
  const detail = document.createElement("small");
  detail.textContent = `${result.label} · ${pct(result.score)}`;
  tag.append(detail);
}

function notice(text) {
  const item = document.createElement("li");
  item.className = "notice";
  item.textContent = text;
  $("messages").append(item);
}

function send(event) {
  event.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
  const id = `m${nextId++}`;
  $("chat-empty").hidden = true;
  const bubble = document.createElement("li");
  bubble.className = "bubble";
  bubble.dataset.id = id;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const tag = document.createElement("span");
  tag.className = "tag pending";
  tag.textContent = "분석 중…";
  bubble.append(body, tag);
  $("messages").append(bubble);
  bubble.scrollIntoView({ block: "end" });
  pending.set(id, tag);
  socket.send(JSON.stringify({ id, conversation_id: "web", text }));
  input.value = "";
}

// --- wiring ---------------------------------------------------------------------------------------------------------
$("classify").addEventListener("click", classify);
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) classify();
});
$("chat-form").addEventListener("submit", send);
$("token-save").addEventListener("click", () => {
  token = $("token").value.trim();
  sessionStorage.setItem("gamjeong-token", token);
  $("auth").hidden = true;
  loadInfo();
  if (socket) socket.close();
});
renderBars(null);
loadInfo();
connect();
