// The chat page, live: Server-Sent Events in, fragments rendered by the server appended, the
// input with history and nick completion. No framework. IRC text is never put into the page as
// HTML here: lines come from the server already escaped, and the few things this script
// writes itself (pending lines, notifications, states) use textContent.
(() => {
  "use strict";

  const root = document.getElementById("chat");
  if (!root) return;
  const data = root.dataset;
  const channelId = Number(data.channelId) || null;
  const serverId = Number(data.serverId) || null;
  const live = data.live !== "0";
  const list = document.getElementById("chat-lines");
  const form = document.getElementById("chat-input");
  const input = document.getElementById("chat-text");
  const errorBox = document.getElementById("chat-error");
  const sidebar = document.getElementById("chat-sidebar");
  const UNREAD_KINDS = new Set(["message", "action", "notice"]);
  const COMMANDS = ["away", "back", "close", "invite", "join", "kick", "me", "mode", "msg",
    "nick", "notice", "part", "query", "quote", "topic", "whois"];

  // --- the browser's time zone, for the times the server renders ------------------------------
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone) {
    const hadCookie = /(?:^|; )palaver_tz=/.test(document.cookie);
    document.cookie = `palaver_tz=${encodeURIComponent(zone)}; path=/; max-age=31536000; samesite=lax`;
    if (!hadCookie && data.timezone !== zone && !sessionStorage.getItem("palaver.tzReloaded")) {
      sessionStorage.setItem("palaver.tzReloaded", "1");
      location.reload();
      return;
    }
  }

  // --- helpers -----------------------------------------------------------------------------------
  const csrfToken = () => (form && form.elements.csrfmiddlewaretoken
    ? form.elements.csrfmiddlewaretoken.value
    : (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || "");

  // Server-rendered, auto-escaped markup parsed without running anything, then adopted.
  function parseFragment(html) {
    const doc = new DOMParser().parseFromString(`<body>${html}</body>`, "text/html");
    return Array.from(doc.body.children).map((node) => document.adoptNode(node));
  }

  async function getFragment(url) {
    const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
    if (!response.ok) throw new Error(`${url}: ${response.status}`);
    return { html: await response.text(), response };
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      body,
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(), "X-Requested-With": "fetch" },
    });
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  // A fragment refresh: debounced, and never two in flight. Two overlapping fetches can answer
  // out of order, the older (stale) one last, and nothing would correct it; a refresh asked for
  // while one runs runs once more after it, so what is shown was read after the last change.
  function refresher(fn, ms) {
    let running = false;
    let again = false;
    return debounce(async () => {
      if (running) { again = true; return; }
      running = true;
      try {
        do { again = false; await fn(); } while (again);
      } finally {
        running = false;
      }
    }, ms);
  }

  const atBottom = () => !list || list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  const scrollToBottom = () => { if (list) list.scrollTop = list.scrollHeight; };

  function lastLineId() {
    if (!list) return 0;
    let max = 0;
    list.querySelectorAll(".line[data-id]").forEach((li) => { max = Math.max(max, Number(li.dataset.id)); });
    return max;
  }

  // --- day separators: one per day, also where an older page meets the one below it -------------
  function dedupeDays() {
    if (!list) return;
    let previousDay = null;
    Array.from(list.children).forEach((li) => {
      if (li.classList.contains("day")) {
        if (li.dataset.day === previousDay) li.remove();
        return;
      }
      if (li.dataset.day) previousDay = li.dataset.day;
    });
  }

  // --- scrollback: older pages by keyset, when the top comes into view ---------------------------
  let loadingOlder = false;
  async function loadOlder(link) {
    if (loadingOlder) return;
    loadingOlder = true;
    const holder = link.closest("li");
    try {
      const { html } = await getFragment(link.dataset.olderUrl);
      const before = list.scrollHeight - list.scrollTop;
      const nodes = parseFragment(html);
      // The link goes away with its holder: focus on it would fall to <body>; keep it in the list.
      const hadFocus = holder.contains(document.activeElement);
      holder.replaceWith(...nodes);
      if (hadFocus) list.focus({ preventScroll: true });
      dedupeDays();
      list.scrollTop = list.scrollHeight - before;
      watchOlder();
    } catch (error) {
      console.warn(error);
    } finally {
      loadingOlder = false;
    }
  }

  const olderObserver = "IntersectionObserver" in window && list
    ? new IntersectionObserver((entries) => {
      entries.forEach((entry) => {
        if (entry.isIntersecting) {
          olderObserver.unobserve(entry.target);
          loadOlder(entry.target);
        }
      });
    }, { root: list, rootMargin: "200px 0px 0px 0px" })
    : null;

  function watchOlder() {
    const link = list && list.querySelector("#chat-older a[data-older-url]");
    if (!link) return;
    link.addEventListener("click", (event) => { event.preventDefault(); loadOlder(link); });
    if (olderObserver) olderObserver.observe(link);
  }

  // --- live lines for the open channel -----------------------------------------------------------
  let fetchingNewer = false;
  let fetchAgain = false;
  let unseenWhileHidden = 0;
  const baseTitle = document.title;

  async function fetchNewer() {
    if (!channelId || !live || !list) return;
    if (fetchingNewer) { fetchAgain = true; return; }
    fetchingNewer = true;
    try {
      let more = true;
      while (more) {
        const stick = atBottom();
        const { html, response } = await getFragment(`${data.linesUrl}?after=${lastLineId()}`);
        more = response.headers.get("X-More-Lines") === "1";
        const nodes = parseFragment(html).filter((node) => !(node.dataset.id && document.getElementById(`m${node.dataset.id}`)));
        if (nodes.length) {
          const empty = document.getElementById("chat-empty");
          if (empty) empty.remove();
          nodes.forEach((node) => {
            if (node.classList.contains("line-self")) confirmPending();
          });
          const firstPending = list.querySelector(".line-pending");
          nodes.forEach((node) => list.insertBefore(node, firstPending));
          dedupeDays();
          if (document.hidden) {
            unseenWhileHidden += nodes.filter((n) => n.classList.contains("line")).length;
            document.title = `(${unseenWhileHidden}) ${baseTitle}`;
          }
          if (stick) scrollToBottom();
        }
      }
      markRead();
    } catch (error) {
      console.warn(error);
    } finally {
      fetchingNewer = false;
      if (fetchAgain) { fetchAgain = false; fetchNewer(); }
    }
  }

  const markRead = debounce(() => {
    if (!channelId || !live || document.hidden) return;
    const upTo = lastLineId();
    if (!upTo) return;
    const body = new FormData();
    body.append("up_to", String(upTo));
    // The server answers with a `read` event on every open tab's stream (this one too), which
    // refreshes the counts; refreshing here as well covers a stream that is reconnecting.
    post(data.readUrl, body).then(() => {
      refreshSidebar();
      document.body.dispatchEvent(new CustomEvent("notifications-changed", { bubbles: true }));
    }).catch(() => {});
  }, 400);

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      unseenWhileHidden = 0;
      document.title = baseTitle;
      markRead();
    }
  });

  // --- what you send appears at once, until the server's copy arrives --------------------------
  function addPending(text) {
    if (!list || !form) return;
    const li = document.createElement("li");
    li.className = "line line-message line-pending";
    const time = document.createElement("time");
    const now = new Date();
    time.textContent = `${String(now.getHours()).padStart(2, "0")}:${String(now.getMinutes()).padStart(2, "0")}`;
    const sender = document.createElement("span");
    sender.className = "sender";
    const nick = document.createElement("span");
    nick.className = `nick ${form.dataset.ownNickClass || ""}`;
    nick.textContent = form.dataset.ownNick || "";
    sender.append(nick);
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(time, sender, body);
    list.append(li);
    scrollToBottom();
    setTimeout(() => { if (li.isConnected) li.classList.add("line-unconfirmed"); }, 20000);
  }

  function confirmPending() {
    const pending = list && list.querySelector(".line-pending");
    if (pending) pending.remove();
  }

  // --- sidebar: counts, states, refreshes ------------------------------------------------------
  function sidebarLink(id) {
    return sidebar && sidebar.querySelector(`a[data-channel-id="${Number(id)}"]`);
  }

  function bump(link, selector) {
    const badge = link.querySelector(selector);
    if (!badge) return;
    badge.textContent = String((Number(badge.textContent) || 0) + 1);
    badge.hidden = false;
    const item = link.closest(".chat-buffer");
    if (item && selector === "[data-unread]") item.classList.add("has-unread");
  }

  const refreshSidebar = refresher(async () => {
    if (!sidebar) return;
    try {
      const url = `${data.sidebarUrl}${channelId ? `?open=${channelId}` : ""}`;
      const { html } = await getFragment(url);
      sidebar.replaceChildren(...parseFragment(html));
      setUpNotifyButton();
    } catch (error) {
      console.warn(error);
    }
  }, 300);

  function describeState(payload) {
    const state = payload.state;
    if (state === "connected") return payload.nick ? `connected as ${payload.nick}` : "connected";
    if (state === "connecting") return "connecting…";
    if (state === "disconnected") {
      let text = "disconnected";
      if (payload.error) text += `: ${payload.error}`;
      if (payload.next_retry) {
        const when = new Date(payload.next_retry);
        if (!Number.isNaN(when.getTime())) text += ` · retrying at ${when.toLocaleTimeString()}`;
      }
      return text;
    }
    return "not connected";
  }

  function showServerState(payload) {
    const known = ["connecting", "connected", "disconnected"];
    const state = known.includes(payload.state) ? payload.state : "not-connected";
    document.querySelectorAll(`[data-server-state="${Number(payload.server_id)}"]`).forEach((node) => {
      node.textContent = describeState(payload);
      node.className = `chat-state state-${state}`;
    });
    if (Number(payload.server_id) === serverId && payload.nick && form) {
      form.dataset.ownNick = payload.nick;
      const label = document.getElementById("chat-own-nick");
      if (label) label.textContent = payload.nick;
    }
  }

  // --- topic and members -----------------------------------------------------------------------
  const refreshInfo = refresher(async () => {
    if (!channelId || !data.infoUrl) return;
    try {
      const { html } = await getFragment(data.infoUrl);
      parseFragment(html).forEach((part) => {
        const target = document.getElementById(part.dataset.part);
        if (!target) return;
        if (part.dataset.part === "chat-member-count") target.textContent = part.textContent;
        else target.replaceChildren(...Array.from(part.childNodes));
      });
    } catch (error) {
      console.warn(error);
    }
  }, 250);

  // --- desktop notifications -------------------------------------------------------------------
  const recent = new Map(); // message id -> message event, to describe a notification
  function remember(payload) {
    recent.set(Number(payload.id), payload);
    if (recent.size > 300) recent.delete(recent.keys().next().value);
  }

  function setUpNotifyButton() {
    const button = document.getElementById("chat-notify");
    if (!button) return;
    button.hidden = !("Notification" in window) || Notification.permission !== "default";
    button.addEventListener("click", () => {
      Notification.requestPermission().then(() => { button.hidden = Notification.permission !== "default"; });
    });
  }

  function channelLabel(id) {
    const link = sidebarLink(id);
    const name = link && link.querySelector(".buffer-name");
    return name ? name.textContent.trim() : "";
  }

  function notify(payload) {
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    const line = recent.get(Number(payload.message_id));
    const where = line ? channelLabel(line.channel_id) : "";
    const title = line
      ? (payload.kind === "private" ? `${line.sender} wrote to you` : `${line.sender} in ${where || "a channel"}`)
      : "Palaver: someone mentioned you";
    // Formatting codes out; Notification shows plain text.
    const body = line ? String(line.text).replace(/\x03\d{0,2}(,\d{1,2})?|[\x00-\x1f\x7f]/g, "") : "";
    const shown = new Notification(title, { body, tag: `palaver-${payload.id}` });
    shown.addEventListener("click", () => {
      window.focus();
      if (line && Number(line.channel_id) !== channelId) location.assign(`/chat/${Number(line.channel_id)}/?around=${Number(line.id)}`);
      shown.close();
    });
  }

  // --- the live stream -------------------------------------------------------------------------
  // EventSource gives up on a refused stream without showing why: ask once more with fetch and
  // show the server's reason (429: too many streams for this user). A stream that opens this
  // time is aborted at once, so it frees its slot.
  async function explainRefusal(url, status) {
    const controller = new AbortController();
    try {
      const response = await fetch(url, { credentials: "same-origin", signal: controller.signal });
      if (response.status === 429) status.textContent = (await response.text()).trim();
    } catch (error) {
      console.warn(error);
    } finally {
      controller.abort();
    }
  }

  function connect() {
    const url = new URL(data.eventsUrl, location.href);
    if (data.lastEventId) url.searchParams.set("last_event_id", data.lastEventId);
    const source = new EventSource(url);
    let opened = false;
    const status = document.createElement("span");
    status.className = "chat-live-status";
    status.setAttribute("role", "status");

    source.addEventListener("open", () => {
      status.remove();
      // Topic and members as rendered may predate the subscription: a change in between was
      // announced to no one. Lines are safe (they replay by Last-Event-ID); these are re-read.
      refreshInfo();
      if (opened) {
        // Back after a break: the sidebar and the lines too.
        refreshSidebar();
        fetchNewer();
      }
      opened = true;
    });
    source.addEventListener("error", () => {
      const title = document.querySelector(".chat-title h1");
      status.textContent = source.readyState === EventSource.CLOSED
        ? "live updates stopped: reload the page"
        : "reconnecting…";
      if (title && !status.isConnected) title.append(status);
      if (source.readyState === EventSource.CLOSED) explainRefusal(url, status);
    });
    source.addEventListener("message", (event) => {
      const payload = JSON.parse(event.data);
      remember(payload);
      if (Number(payload.channel_id) === channelId) {
        fetchNewer();
        return;
      }
      const link = sidebarLink(payload.channel_id);
      if (!link) { refreshSidebar(); return; }
      if (UNREAD_KINDS.has(payload.kind)) bump(link, "[data-unread]");
    });
    source.addEventListener("notification", (event) => {
      const payload = JSON.parse(event.data);
      refreshSidebar();
      document.body.dispatchEvent(new CustomEvent("notifications-changed", { bubbles: true }));
      notify(payload);
    });
    source.addEventListener("channel", (event) => {
      const payload = JSON.parse(event.data);
      if (Number(payload.channel_id) === channelId) refreshInfo();
      else if (!sidebarLink(payload.channel_id)) refreshSidebar();
    });
    source.addEventListener("server_state", (event) => showServerState(JSON.parse(event.data)));
    // This account read a channel in some tab: its unread and highlight counts changed.
    source.addEventListener("read", () => {
      refreshSidebar();
      document.body.dispatchEvent(new CustomEvent("notifications-changed", { bubbles: true }));
    });
    source.addEventListener("resync", () => { source.close(); location.reload(); });
    source.addEventListener("signed_out", () => { source.close(); location.reload(); });
    window.addEventListener("pagehide", () => source.close());
  }

  // --- the input -------------------------------------------------------------------------------
  const HISTORY_KEY = "palaver.inputHistory";
  let history = [];
  try { history = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]"); } catch { history = []; }
  let historyIndex = history.length;
  let draft = "";

  // Lines that carry a password (to a network service, /oper, /quote PASS, a channel key) are
  // never kept: the history lives in localStorage, in clear, on whatever device this is. The
  // services list mirrors gateway/redaction.py, which masks the same lines before they are stored.
  const SECRET_LINE = new RegExp(
    "^/(?:(?:msg|query|notice)\\s+(?:[a-z]*serv|q|x)(?:@\\S+)?\\s+" +
      "(?:identify|id|register|ghost|release|regain|recover|login|auth|group|(?:set\\s+)?(?:new)?pass(?:word)?)\\b" +
      "|(?:ns|nickserv|cs|chanserv)\\b|oper\\b|(?:quote|raw)\\s+(?:pass|oper|authenticate)\\b" +
      "|join\\s+\\S+\\s+\\S)",
    "i",
  );

  function rememberInput(text) {
    if (SECRET_LINE.test(text.trim())) return;
    if (history[history.length - 1] !== text) history.push(text);
    history = history.slice(-100);
    try { localStorage.setItem(HISTORY_KEY, JSON.stringify(history)); } catch { /* full or private */ }
    historyIndex = history.length;
    draft = "";
  }

  function setInput(value) {
    input.value = value;
    input.setSelectionRange(value.length, value.length);
    resizeInput();
  }

  function resizeInput() {
    input.rows = Math.min(6, Math.max(1, input.value.split("\n").length));
  }

  // Tab: the nick (or command, or channel) that starts with what is before the caret; again:
  // the next one. Nicks who spoke lately come first.
  let completion = null;
  function candidates(word, atStart) {
    const lower = word.toLowerCase();
    if (atStart && word.startsWith("/")) {
      return COMMANDS.filter((c) => c.startsWith(lower.slice(1))).map((c) => `/${c}`);
    }
    if (word.startsWith("#")) {
      const names = Array.from(document.querySelectorAll(".buffer-channel .buffer-name")).map((n) => n.textContent.trim());
      return names.filter((n) => n.toLowerCase().startsWith(lower));
    }
    const seen = new Set();
    const nicks = [];
    const add = (nick) => {
      const key = nick.toLowerCase();
      if (nick && !seen.has(key) && key.startsWith(lower)) { seen.add(key); nicks.push(nick); }
    };
    const own = ((form && form.dataset.ownNick) || "").toLowerCase();
    const spoke = list ? Array.from(list.querySelectorAll(".line-message[data-sender], .line-action[data-sender]")).reverse() : [];
    spoke.forEach((li) => { if (li.dataset.sender.toLowerCase() !== own) add(li.dataset.sender); });
    document.querySelectorAll("#chat-member-list [data-nick]").forEach((li) => add(li.dataset.nick));
    return nicks;
  }

  function complete(backwards) {
    // Typed or edited since the last Tab: start over from what is there now.
    if (completion && (input.value !== completion.value || input.selectionStart !== completion.end)) {
      completion = null;
    }
    if (!completion) {
      const caret = input.selectionStart;
      const before = input.value.slice(0, caret);
      const start = before.search(/\S*$/);
      const word = before.slice(start);
      if (!word) return false;
      const options = candidates(word, start === 0);
      if (!options.length) return false;
      completion = { start, end: caret, options, index: -1, atStart: start === 0 };
    }
    const c = completion;
    // Past the last candidate (or the first, backwards), Tab moves focus on as usual: completion
    // never traps the keyboard in the input.
    if (c.index === -1) {
      c.index = backwards ? c.options.length - 1 : 0;
    } else {
      const next = c.index + (backwards ? -1 : 1);
      if (next < 0 || next >= c.options.length) { completion = null; return false; }
      c.index = next;
    }
    const choice = c.options[c.index];
    const isNick = !choice.startsWith("/") && !choice.startsWith("#");
    const suffix = c.atStart && isNick ? ": " : " ";
    const replacement = choice + suffix;
    input.value = input.value.slice(0, c.start) + replacement + input.value.slice(c.end);
    c.end = c.start + replacement.length;
    c.value = input.value;
    input.setSelectionRange(c.end, c.end);
    return true;
  }

  function showError(html) {
    if (!errorBox) return;
    errorBox.replaceChildren(...parseFragment(html));
  }

  async function submit() {
    const text = input.value;
    if (!text.trim()) return;
    const body = new FormData(form);
    let response;
    try {
      response = await post(form.action, body);
    } catch {
      errorBox.textContent = "Could not reach Palaver; nothing was sent.";
      return;
    }
    if (response.status === 204) {
      errorBox.replaceChildren();
      rememberInput(text);
      setInput("");
      const redirect = response.headers.get("HX-Redirect");
      if (redirect) { location.assign(redirect); return; }
      const lines = text.split(/\r\n|\r|\n/).filter((l) => l.trim());
      const isCommand = lines.length === 1 && lines[0].startsWith("/") && !lines[0].startsWith("//");
      if (!isCommand && live) lines.forEach((l) => addPending(l.startsWith("//") ? l.slice(1) : l));
      return;
    }
    if (response.status === 403) {
      errorBox.textContent = "Your session has ended; reload the page to sign in again.";
      return;
    }
    showError(await response.text());
  }

  if (form && input) {
    form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
    input.addEventListener("input", () => { resizeInput(); if (errorBox) errorBox.replaceChildren(); });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Tab" && !event.ctrlKey && !event.altKey && !event.metaKey) {
        if (complete(event.shiftKey)) event.preventDefault();
        return;
      }
      completion = null;
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
        return;
      }
      const firstLine = !input.value.slice(0, input.selectionStart).includes("\n");
      const lastLine = !input.value.slice(input.selectionEnd).includes("\n");
      if (event.key === "ArrowUp" && firstLine && history.length && historyIndex > 0) {
        if (historyIndex === history.length) draft = input.value;
        historyIndex -= 1;
        setInput(history[historyIndex]);
        event.preventDefault();
      } else if (event.key === "ArrowDown" && lastLine && historyIndex < history.length) {
        historyIndex += 1;
        setInput(historyIndex === history.length ? draft : history[historyIndex]);
        event.preventDefault();
      }
    });
  }

  // --- start -----------------------------------------------------------------------------------
  const target = data.targetId && document.getElementById(`m${Number(data.targetId)}`);
  if (target) {
    target.classList.add("line-target");
    target.scrollIntoView({ block: "center" });
  } else {
    scrollToBottom();
  }
  watchOlder();
  setUpNotifyButton();
  connect();
  // Opening the page (a GET) changes nothing; showing the latest lines is what marks them read.
  markRead();
})();
