// Link previews under chat lines. The server renders them (media/_line_previews.html, escaped);
// this script only asks for them and puts them in place:
// - for the lines on the page when it opens and for every line added later (scrollback, live
//   lines), one request per batch of lines with a link;
// - when a `preview` event says a line's preview is ready (chat.js re-dispatches the stream's
//   event as `palaver:preview` on document).
(() => {
  "use strict";

  const root = document.getElementById("chat");
  const list = document.getElementById("chat-lines");
  if (!root || !list || !root.dataset.previewsUrl) return;
  const url = root.dataset.previewsUrl;
  const wanted = new Set();
  let timer = null;

  function hasLink(li) {
    return li.matches(".line[data-id]") && li.querySelector(".text a[href^='http']");
  }

  function ask(id) {
    wanted.add(Number(id));
    clearTimeout(timer);
    timer = setTimeout(load, 120);
  }

  function parse(html) {
    const doc = new DOMParser().parseFromString(`<body>${html}</body>`, "text/html");
    return Array.from(doc.body.children).map((node) => document.adoptNode(node));
  }

  async function load() {
    const ids = Array.from(wanted).slice(0, 200);
    ids.forEach((id) => wanted.delete(id));
    if (!ids.length) return;
    try {
      const response = await fetch(`${url}?ids=${ids.join(",")}`, {
        credentials: "same-origin",
        headers: { "X-Requested-With": "fetch" },
      });
      if (!response.ok) return;
      const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
      parse(await response.text()).forEach((block) => {
        const line = document.getElementById(`m${Number(block.dataset.for)}`);
        if (!line) return;
        const old = line.querySelector(".link-previews");
        if (old) old.replaceWith(block);
        else line.append(block);
      });
      if (stick) list.scrollTop = list.scrollHeight;
    } catch (error) {
      console.warn(error);
    }
    if (wanted.size) load();
  }

  list.querySelectorAll(".line[data-id]").forEach((li) => { if (hasLink(li)) ask(li.dataset.id); });
  new MutationObserver((records) => {
    records.forEach((record) => record.addedNodes.forEach((node) => {
      if (node.nodeType === Node.ELEMENT_NODE && hasLink(node)) ask(node.dataset.id);
    }));
  }).observe(list, { childList: true });
  document.addEventListener("palaver:preview", (event) => {
    const detail = event.detail || {};
    // A line not shown yet is asked for when it is added (the observer above).
    if (document.getElementById(`m${Number(detail.message_id)}`)) ask(detail.message_id);
  });
})();
