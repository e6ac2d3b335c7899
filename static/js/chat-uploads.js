// Files into the chat: dropped on the chat, pasted into the input, or chosen with the Attach
// button this script adds. Each is sent to the channel's upload URL (media.views.upload), which
// keeps it and says its link in the channel as a normal line; a refusal (a size limit, the
// account's total) is shown where errors of the input are, #chat-error.
(() => {
  "use strict";

  const form = document.getElementById("chat-input");
  const input = document.getElementById("chat-text");
  const errorBox = document.getElementById("chat-error");
  if (!form || !input || !form.dataset.uploadUrl) return;
  const uploadUrl = form.dataset.uploadUrl;
  const maxBytes = Number(form.dataset.uploadMaxBytes) || 0;
  // The whole chat: a file dropped on the lines or a sidebar is meant for this buffer too, and
  // must not make the browser leave the page to show it.
  const dropZone = document.getElementById("chat") || form;

  const csrfToken = () => (form.elements.csrfmiddlewaretoken
    ? form.elements.csrfmiddlewaretoken.value
    : (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || "");

  // The Attach button: the way in for a keyboard or a screen reader, and on a phone.
  const picker = document.createElement("input");
  picker.type = "file";
  picker.multiple = true;
  picker.hidden = true;
  picker.id = "chat-file";
  const attach = document.createElement("button");
  attach.type = "button";
  attach.className = "button secondary chat-attach";
  attach.id = "chat-attach";
  // A paperclip, with the word beside it where there is room (media.css hides it on a phone).
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "18");
  svg.setAttribute("height", "18");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  const clip = document.createElementNS("http://www.w3.org/2000/svg", "path");
  clip.setAttribute("d", "M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 6 0v10.5a1.5 1.5 0 0 1-3 0V6.5");
  clip.setAttribute("fill", "none");
  clip.setAttribute("stroke", "currentColor");
  clip.setAttribute("stroke-width", "2");
  clip.setAttribute("stroke-linecap", "round");
  svg.append(clip);
  const word = document.createElement("span");
  word.className = "chat-attach-label";
  word.textContent = "Attach";
  attach.append(svg, word);
  attach.title = "Send a file (or drop or paste one)";
  attach.setAttribute("aria-label", "Attach a file");
  const status = document.createElement("span");
  status.className = "chat-upload-status";
  status.setAttribute("role", "status");
  status.id = "chat-upload-status";
  const row = form.querySelector(".chat-input-row") || form;
  const send = row.querySelector("button[type=submit]");
  row.insertBefore(attach, send);
  row.append(picker);
  form.insertBefore(status, form.querySelector(".chat-input-row"));
  attach.addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => {
    sendFiles(Array.from(picker.files || []));
    picker.value = "";
  });

  function showError(text) {
    if (errorBox) errorBox.textContent = text;
  }

  const queue = [];
  let busy = false;

  function sendFiles(files) {
    if (!files.length) return;
    if (errorBox) errorBox.replaceChildren();
    queue.push(...files);
    if (!busy) next();
  }

  async function next() {
    const file = queue.shift();
    if (!file) { busy = false; status.textContent = ""; return; }
    busy = true;
    if (maxBytes && file.size > maxBytes) {
      showError(`${file.name} was not sent: it is larger than the limit of ${maxBytes.toLocaleString("en")} bytes (LIMIT_UPLOAD_BYTES).`);
      next();
      return;
    }
    status.textContent = `Uploading ${file.name}…`;
    const body = new FormData();
    body.append("file", file, file.name || "pasted");
    try {
      const response = await fetch(uploadUrl, {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), "X-Requested-With": "fetch" },
      });
      let answer = {};
      try { answer = await response.json(); } catch { answer = {}; }
      if (response.redirected || response.status === 403) {
        // Sent to the sign-in page: the session ended.
        showError(`${file.name} was not sent: your session has ended; reload the page to sign in again.`);
      } else if (response.status !== 201) {
        showError(`${file.name} was not sent: ${answer.error || `the server answered ${response.status}.`}`);
      }
    } catch {
      showError(`${file.name} was not sent: could not reach Palaver.`);
    }
    next();
  }

  // --- drop ------------------------------------------------------------------------------------
  const carriesFiles = (event) => Array.from((event.dataTransfer && event.dataTransfer.types) || []).includes("Files");
  let depth = 0;
  dropZone.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    depth += 1;
    form.classList.add("drop-target");
  });
  dropZone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) form.classList.remove("drop-target");
  });
  dropZone.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  dropZone.addEventListener("drop", (event) => {
    depth = 0;
    form.classList.remove("drop-target");
    const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
    if (!files.length) return;
    event.preventDefault();
    sendFiles(files);
  });

  // --- paste: files (a screenshot, a copied file) are sent; text pastes as usual -----------------
  input.addEventListener("paste", (event) => {
    const files = Array.from((event.clipboardData && event.clipboardData.files) || []);
    if (!files.length) return;
    event.preventDefault();
    sendFiles(files);
  });
})();
