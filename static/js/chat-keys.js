// The chat's keyboard: moving between buffers, a quick switcher (Ctrl+K), typing anywhere
// into the input, and a sheet listing it all (? or Alt+/). No library: a handful of keys on one
// listener, and the two dialogs are <dialog> elements (focus kept inside, Escape closes).
//
//   Alt+Up / Alt+Down              previous / next buffer
//   Alt+Shift+Up / Alt+Shift+Down  previous / next buffer with unread lines
//   Alt+A                          next buffer with a highlight, else with unread lines
//   Ctrl+K                         switch to a buffer by name
//   ? (not typing) or Alt+/        this list
(() => {
  "use strict";

  const root = document.getElementById("chat");
  if (!root) return;
  const input = document.getElementById("chat-text");
  const help = document.getElementById("chat-keys-help");
  const switcher = document.getElementById("chat-switcher");
  const query = document.getElementById("chat-switcher-input");
  const options = document.getElementById("chat-switcher-list");
  const none = document.getElementById("chat-switcher-none");

  // --- buffers, as the sidebar lists them ----------------------------------------------------
  const buffers = () => Array.from(document.querySelectorAll("#chat-sidebar a[data-channel-id]"));
  const currentIndex = (all) => all.findIndex((a) => a.getAttribute("aria-current") === "page");
  const hasUnread = (a) => {
    const badge = a.querySelector("[data-unread]");
    return Boolean(badge && !badge.hidden);
  };
  const hasHighlight = (a) => {
    const badge = a.querySelector("[data-highlights]");
    return Boolean(badge && !badge.hidden && Number(badge.textContent) > 0);
  };

  function go(link) {
    if (link) location.assign(link.href);
  }

  // The next buffer after the open one (before it, with step -1) that `wanted` accepts,
  // going round the list; the open one itself only when nothing else is.
  function step(direction, wanted = () => true) {
    const all = buffers();
    if (!all.length) return null;
    const start = currentIndex(all);
    const base = start >= 0 ? start : (direction > 0 ? -1 : 0);
    for (let n = 1; n <= all.length; n += 1) {
      const index = (((base + direction * n) % all.length) + all.length) % all.length;
      if (index !== start && wanted(all[index])) return all[index];
    }
    return null;
  }

  // --- the quick switcher: a combobox over a listbox of buffers ------------------------------
  let matches = [];
  let active = 0;

  function label(a) {
    const name = a.dataset.name || a.textContent.trim();
    const server = a.closest(".chat-server");
    const serverName = server ? server.querySelector(".chat-server-name").textContent.trim() : "";
    return { name, serverName };
  }

  function renderOptions() {
    const typed = query.value.trim().toLowerCase().replace(/^[#&]+/, "");
    const all = buffers();
    const scored = [];
    all.forEach((a, order) => {
      const { name, serverName } = label(a);
      const bare = name.toLowerCase().replace(/^[#&]+/, "");
      let score;
      if (!typed) score = hasHighlight(a) ? 0 : (hasUnread(a) ? 1 : 2);
      else if (bare.startsWith(typed)) score = 0;
      else if (bare.includes(typed)) score = 1;
      else if (serverName.toLowerCase().includes(typed)) score = 2;
      else return;
      scored.push({ a, name, serverName, score, order });
    });
    scored.sort((x, y) => x.score - y.score || x.order - y.order);
    matches = scored.slice(0, 50);
    active = Math.min(active, Math.max(0, matches.length - 1));
    options.replaceChildren(...matches.map((match, n) => {
      const li = document.createElement("li");
      li.id = `chat-switcher-option-${n}`;
      li.setAttribute("role", "option");
      li.className = "switcher-option";
      const name = document.createElement("span");
      name.className = "switcher-name";
      name.textContent = match.name;
      const where = document.createElement("span");
      where.className = "switcher-server muted small";
      where.textContent = match.serverName;
      li.append(name, " ", where);
      if (hasUnread(match.a)) {
        const unread = document.createElement("span");
        unread.className = "switcher-unread small";
        unread.textContent = "unread";
        li.append(" ", unread);
      }
      li.addEventListener("mousedown", (event) => { event.preventDefault(); go(match.a); });
      return li;
    }));
    // Said outside the listbox (a listbox holds options only), and announced.
    if (none) none.hidden = matches.length > 0;
    markActive();
  }

  function markActive() {
    Array.from(options.querySelectorAll("[role=option]")).forEach((li, n) => {
      li.setAttribute("aria-selected", String(n === active));
      if (n === active) li.scrollIntoView({ block: "nearest" });
    });
    if (matches.length) query.setAttribute("aria-activedescendant", `chat-switcher-option-${active}`);
    else query.removeAttribute("aria-activedescendant");
  }

  function openSwitcher() {
    if (!switcher || switcher.open) return;
    if (help && help.open) help.close();
    query.value = "";
    active = 0;
    renderOptions();
    query.setAttribute("aria-expanded", "true");
    switcher.showModal();
    query.focus();
  }

  if (switcher && query && options) {
    query.addEventListener("input", () => { active = 0; renderOptions(); });
    query.addEventListener("keydown", (event) => {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        if (!matches.length) return;
        active = (active + (event.key === "ArrowDown" ? 1 : -1) + matches.length) % matches.length;
        markActive();
      } else if (event.key === "Enter") {
        event.preventDefault();
        if (matches[active]) go(matches[active].a);
      }
    });
    switcher.addEventListener("close", () => {
      query.setAttribute("aria-expanded", "false");
      if (input) input.focus();
    });
    // A click on the backdrop (the dialog itself, outside its box) closes it.
    switcher.addEventListener("click", (event) => { if (event.target === switcher) switcher.close(); });
  }

  // --- the help sheet ------------------------------------------------------------------------
  function toggleHelp() {
    if (!help) return;
    if (help.open) { help.close(); return; }
    if (switcher && switcher.open) switcher.close();
    help.showModal();
  }
  // The sidebar's button (the sidebar is re-rendered: one listener on the document).
  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-keys-help]")) toggleHelp();
  });
  if (help) {
    help.addEventListener("close", () => { if (input) input.focus(); });
    help.addEventListener("click", (event) => {
      if (event.target === help || event.target.closest("[data-close]")) help.close();
    });
  }

  // --- the keys ---------------------------------------------------------------------------------
  const editable = (node) => Boolean(node && node.closest &&
    node.closest("input, textarea, select, [contenteditable=''], [contenteditable=true]"));
  const dialogOpen = () => Boolean((help && help.open) || (switcher && switcher.open));

  // Capture phase: before the input's own keys (Alt+Up is not its history).
  window.addEventListener("keydown", (event) => {
    if (event.isComposing || event.metaKey) return;
    const { key, code, altKey, ctrlKey, shiftKey } = event;
    if (ctrlKey && !altKey && (key === "k" || key === "K")) {
      event.preventDefault();
      event.stopPropagation();
      if (switcher && switcher.open) switcher.close();
      else openSwitcher();
      return;
    }
    if (altKey && !ctrlKey && code === "Slash") {
      event.preventDefault();
      event.stopPropagation();
      toggleHelp();
      return;
    }
    if (dialogOpen()) return; // the dialog has the keys (Escape closes it)
    if (altKey && !ctrlKey && (key === "ArrowUp" || key === "ArrowDown")) {
      event.preventDefault();
      event.stopPropagation();
      const direction = key === "ArrowDown" ? 1 : -1;
      go(shiftKey ? step(direction, hasUnread) : step(direction));
      return;
    }
    if (altKey && !ctrlKey && !shiftKey && code === "KeyA") {
      event.preventDefault();
      event.stopPropagation();
      go(step(1, hasHighlight) || step(1, hasUnread));
      return;
    }
    if (altKey || ctrlKey || editable(event.target)) return;
    if (key === "?") {
      event.preventDefault();
      toggleHelp();
      return;
    }
    // A printable key anywhere else: to the input, where it is typed (focus moves before the
    // key's default action, so the character lands there).
    if (input && key.length === 1 && key !== " ") input.focus();
  }, true);
})();
