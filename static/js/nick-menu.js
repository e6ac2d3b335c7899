// The nick menu of the chat: on a nick in the lines or in the member list, a small menu to open
// a conversation, ask WHOIS, and (in a channel, only where your own prefix allows it on IRC)
// op/deop, voice/devoice, kick and ban. Each action is a slash command sent through the chat's
// own send URL (the form's action), so the server checks and refuses exactly as when typed.
// Keyboard: members are focusable; Enter, Space or the context-menu key opens the menu; arrows
// move; Escape closes and gives focus back. chat.js is not touched: this only reads the page.
(function () {
  "use strict";
  // Its stylesheet sits beside it (the chat template adds only this script).
  const script = document.currentScript;
  if (script && script.dataset.css) {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = script.dataset.css;
    document.head.append(link);
  }
  const chat = document.getElementById("chat");
  const form = document.getElementById("chat-input");
  if (!chat || !form) return;
  const lines = document.getElementById("chat-lines");
  const members = document.getElementById("chat-members");
  const isChannel = Boolean(members);
  // Prefix symbols, strongest first (owner, admin, op, halfop, voice).
  const RANKS = { "~": 5, "&": 4, "@": 3, "%": 2, "+": 1 };

  function rank(prefixes) {
    return Math.max(0, ...Array.from(prefixes || "").map((c) => RANKS[c] || 0));
  }

  function prefixesOf(nick) {
    if (!members || !nick) return "";
    const lower = nick.toLowerCase();
    const item = Array.from(members.querySelectorAll("li.member")).find(
      (li) => (li.dataset.nick || "").toLowerCase() === lower);
    const prefix = item && item.querySelector(".prefix");
    return prefix ? prefix.textContent.trim() : "";
  }

  function ownNick() { return form.dataset.ownNick || ""; }

  // What may be done to `nick`, given our own prefixes in this channel.
  function actions(nick) {
    const list = [
      { label: "Open a conversation", command: `/query ${nick}` },
      { label: "Who is this? (whois)", command: `/whois ${nick}` },
    ];
    if (!isChannel || nick.toLowerCase() === ownNick().toLowerCase()) return list;
    const mine = rank(prefixesOf(ownNick()));
    const theirs = prefixesOf(nick);
    if (mine >= RANKS["@"]) {
      list.push(theirs.includes("@")
        ? { label: "Take operator (deop)", command: `/mode -o ${nick}` }
        : { label: "Make operator (op)", command: `/mode +o ${nick}` });
    }
    if (mine >= RANKS["%"]) {
      list.push(theirs.includes("+")
        ? { label: "Take voice (devoice)", command: `/mode -v ${nick}` }
        : { label: "Give voice", command: `/mode +v ${nick}` });
      list.push({ label: "Kick", command: `/kick ${nick}`, danger: true });
      list.push({ label: "Ban", command: `/mode +b ${nick}!*@*`, danger: true });
    }
    return list;
  }

  // --- sending -------------------------------------------------------------------------------
  async function send(command) {
    const body = new FormData();
    body.set("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    body.set("text", command);
    const errorBox = document.getElementById("chat-error");
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST", body, headers: { "HX-Request": "true" }, credentials: "same-origin",
      });
    } catch (error) {
      if (errorBox) errorBox.textContent = "Not sent: the connection to Palaver failed.";
      return;
    }
    const redirect = response.headers.get("HX-Redirect");
    if (response.ok && redirect) { location.assign(redirect); return; }
    if (!response.ok && errorBox) {
      const html = await response.text();
      const doc = new DOMParser().parseFromString(html, "text/html");
      errorBox.textContent = (doc.body.textContent || "Not sent.").trim();
    }
  }

  // --- the menu ------------------------------------------------------------------------------
  let menu = null;
  let opener = null;

  function close(giveFocusBack) {
    if (!menu) return;
    menu.remove();
    menu = null;
    if (opener) {
      opener.setAttribute("aria-expanded", "false");
      if (giveFocusBack) opener.focus();
    }
    opener = null;
  }

  function open(target, nick) {
    close(false);
    opener = target;
    menu = document.createElement("div");
    menu.className = "nick-menu";
    menu.setAttribute("role", "menu");
    menu.setAttribute("aria-label", `Actions for ${nick}`);
    const title = document.createElement("div");
    title.className = "nick-menu-title";
    title.setAttribute("aria-hidden", "true");
    title.textContent = nick;
    menu.append(title);
    actions(nick).forEach((action) => {
      const item = document.createElement("button");
      item.type = "button";
      item.setAttribute("role", "menuitem");
      item.tabIndex = -1;
      item.textContent = action.label;
      item.dataset.command = action.command;
      if (action.danger) item.classList.add("danger-text");
      item.addEventListener("click", () => { close(true); send(action.command); });
      menu.append(item);
    });
    document.body.append(menu);
    const box = target.getBoundingClientRect();
    const width = menu.offsetWidth;
    const left = Math.max(4, Math.min(box.left, window.innerWidth - width - 4));
    let top = box.bottom + 2;
    if (top + menu.offsetHeight > window.innerHeight) top = Math.max(4, box.top - menu.offsetHeight - 2);
    menu.style.left = `${left + window.scrollX}px`;
    menu.style.top = `${top + window.scrollY}px`;
    target.setAttribute("aria-expanded", "true");
    menu.querySelector("[role=menuitem]").focus();
    menu.addEventListener("keydown", (event) => {
      const items = Array.from(menu.querySelectorAll("[role=menuitem]"));
      const index = items.indexOf(document.activeElement);
      if (event.key === "Escape") { event.preventDefault(); close(true); }
      else if (event.key === "ArrowDown") { event.preventDefault(); items[(index + 1) % items.length].focus(); }
      else if (event.key === "ArrowUp") { event.preventDefault(); items[(index - 1 + items.length) % items.length].focus(); }
      else if (event.key === "Home") { event.preventDefault(); items[0].focus(); }
      else if (event.key === "End") { event.preventDefault(); items[items.length - 1].focus(); }
      else if (event.key === "Tab") { close(false); }
    });
  }

  function nickAt(element) {
    if (!element || !element.closest) return null;
    const member = element.closest("#chat-members li.member");
    if (member) return { target: member.querySelector(".nick") || member, nick: member.dataset.nick };
    const span = element.closest("#chat-lines .nick");
    if (span) return { target: span, nick: span.textContent.trim() };
    return null;
  }

  document.addEventListener("click", (event) => {
    if (menu && menu.contains(event.target)) return;
    const found = nickAt(event.target);
    if (found && found.nick && !(lines && window.getSelection && String(window.getSelection()))) {
      event.preventDefault();
      open(found.target, found.nick);
      return;
    }
    close(false);
  });

  document.addEventListener("keydown", (event) => {
    if (!["Enter", " ", "ContextMenu"].includes(event.key) && !(event.shiftKey && event.key === "F10")) return;
    const found = nickAt(document.activeElement);
    if (!found || found.target !== document.activeElement) return;
    event.preventDefault();
    open(found.target, found.nick);
  });

  // Members' nicks are focusable menu buttons; the list is replaced when it changes, so they
  // are marked again.
  function markMembers() {
    if (!members) return;
    members.querySelectorAll("li.member .nick:not([tabindex])").forEach((nick) => {
      nick.tabIndex = 0;
      nick.setAttribute("role", "button");
      nick.setAttribute("aria-haspopup", "menu");
      nick.setAttribute("aria-expanded", "false");
    });
  }
  if (members) {
    markMembers();
    new MutationObserver(markMembers).observe(members, { childList: true, subtree: true });
  }
  window.addEventListener("resize", () => close(false));
})();
