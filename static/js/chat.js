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

  // --- joins, parts and quits arriving live fold like the rendered ones ------------------------
  // (channels_app/templatetags/chat_lines.py folds a page's runs; a live line may extend the run
  // above it, so the run at the bottom is rebuilt from its lines.)
  const RUN_KINDS = ["join", "part", "quit"];
  const RUN_VERBS = { join: "joined", part: "left", quit: "quit" };
  const runKind = (li) => RUN_KINDS.find((k) => li.classList.contains(`line-${k}`));

  function foldTail() {
    if (!list) return;
    const group = [];
    let head = null;
    for (let li = list.lastElementChild; li; li = li.previousElementSibling) {
      if (li.classList.contains("line-pending")) continue;
      if (li.classList.contains("line-run")) { head = li; continue; }
      if (!runKind(li) || !li.dataset.id) break;
      group.unshift(li);
    }
    if (group.length < 2) return;
    const open = head && head.querySelector(".run-toggle").getAttribute("aria-expanded") === "true";
    const runId = `run-${group[0].dataset.id}`;
    const byKind = new Map();
    group.forEach((li) => {
      const kind = runKind(li);
      const nick = li.querySelector(".text .nick");
      if (!byKind.has(kind)) byKind.set(kind, new Map());
      const names = byKind.get(kind);
      if (nick && !names.has(nick.textContent.toLowerCase())) names.set(nick.textContent.toLowerCase(), nick);
    });
    const summary = document.createElement("span");
    summary.className = "run-summary";
    let firstPart = true;
    byKind.forEach((names, kind) => {
      if (!firstPart) summary.append("; ");
      firstPart = false;
      const shown = Array.from(names.values());
      shown.slice(0, 6).forEach((nick, n) => {
        if (n) summary.append(", ");
        summary.append(nick.cloneNode(true));
      });
      if (shown.length > 6) summary.append(` and ${shown.length - 6} others`);
      summary.append(` ${RUN_VERBS[kind]}`);
    });
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "run-toggle";
    toggle.dataset.run = runId;
    toggle.setAttribute("aria-expanded", String(Boolean(open)));
    toggle.textContent = open ? "hide" : `show ${group.length} lines`;
    const li = document.createElement("li");
    li.className = "line line-run";
    li.id = runId;
    li.dataset.day = group[0].dataset.day || "";
    const sender = document.createElement("span");
    sender.className = "sender";
    sender.textContent = "⇄";
    const text = document.createElement("span");
    text.className = "text";
    text.append(summary, " ", toggle);
    li.append(group[0].querySelector("time").cloneNode(true), sender, text);
    if (head) head.remove();
    group[0].before(li);
    group.forEach((line) => {
      line.classList.add("in-run");
      line.dataset.run = runId;
      line.hidden = !open;
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
          foldTail();
          if (document.hidden) markUnseen(nodes);
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

  // Lines that arrive while the tab is hidden get the "new messages" divider above the first
  // of them, as a page opened later would; it moves on the next time the tab is left.
  function markUnseen(nodes) {
    if (document.getElementById("chat-unread")) return;
    const first = nodes.find((n) => n.classList.contains("line") && !n.classList.contains("line-self")
      && ["message", "action", "notice"].some((k) => n.classList.contains(`line-${k}`)));
    if (!first || !first.isConnected) return;
    const divider = document.createElement("li");
    divider.className = "unread-divider";
    divider.id = "chat-unread";
    const label = document.createElement("span");
    label.textContent = "New messages";
    divider.append(label);
    first.before(divider);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      const old = document.getElementById("chat-unread");
      if (old) old.remove();
    }
    if (!document.hidden) {
      unseenWhileHidden = 0;
      document.title = baseTitle;
      markRead();
    }
  });

  // --- what you send appears at once, until the server's copy arrives --------------------------
  // Each input sent carries an id (cid) of this page's making; the gateway names it in a
  // send_error event when a line of it could not be sent or the server refused it, and the
  // reason is shown here, next to the line, with a Retry.
  const sentInputs = new Map(); // cid -> the text sent, for a Retry
  const newCid = () => `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;

  function clockText(date, withSeconds = false) {
    let minutes = String(date.getMinutes()).padStart(2, "0");
    if (withSeconds) minutes += `:${String(date.getSeconds()).padStart(2, "0")}`;
    if (data.timeFormat === "12h") {
      return `${date.getHours() % 12 || 12}:${minutes} ${date.getHours() < 12 ? "AM" : "PM"}`;
    }
    return `${String(date.getHours()).padStart(2, "0")}:${minutes}`;
  }

  function addPending(text, cid, command = false) {
    if (!list || !form) return null;
    const li = document.createElement("li");
    li.className = `line ${command ? "line-command" : "line-message"} line-pending`;
    if (cid) li.dataset.cid = cid;
    const time = document.createElement("time");
    time.textContent = clockText(new Date());
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
    const empty = document.getElementById("chat-empty");
    if (empty) empty.remove();
    list.append(li);
    scrollToBottom();
    if (command) {
      // A command has no line of its own to wait for: it shows while the server may refuse it.
      setTimeout(() => { if (li.isConnected && !li.classList.contains("line-failed")) li.remove(); }, 8000);
    } else {
      setTimeout(() => {
        if (li.isConnected && !li.classList.contains("line-failed")) {
          li.classList.add("line-unconfirmed");
          failLine(li, "No word from the server yet: it may not have been sent.", false);
        }
      }, 20000);
    }
    return li;
  }

  function confirmPending() {
    // The oldest line still waiting, or one given up on ("no word yet") that arrived late.
    const pending = list && list.querySelector(
      ".line-pending.line-message:not(.line-failed), .line-pending.line-message.line-unconfirmed",
    );
    if (pending) pending.remove();
  }

  // The reason next to the line, a Retry (sends the same input again) and a Dismiss.
  function failLine(li, reason, announce = true) {
    li.classList.add("line-failed");
    let note = li.querySelector(".line-error");
    if (!note) {
      note = document.createElement("span");
      note.className = "line-error";
      const why = document.createElement("span");
      why.className = "line-error-reason";
      if (announce) why.setAttribute("role", "alert");
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "button small line-retry";
      retry.textContent = "Retry";
      retry.addEventListener("click", () => {
        const text = sentInputs.get(li.dataset.cid) ?? li.querySelector(".text").textContent;
        list.querySelectorAll(`[data-cid="${CSS.escape(li.dataset.cid || "")}"]`).forEach((n) => n.remove());
        li.remove();
        sendText(text);
        if (input) input.focus();
      });
      const dismiss = document.createElement("button");
      dismiss.type = "button";
      dismiss.className = "button secondary small line-dismiss";
      dismiss.textContent = "Dismiss";
      dismiss.addEventListener("click", () => { li.remove(); if (input) input.focus(); });
      note.append(why, retry, dismiss);
      li.append(note);
    }
    note.querySelector(".line-error-reason").textContent = reason;
  }

  function showSendError(payload) {
    const cid = String(payload.cid || "");
    if (!cid || !sentInputs.has(cid) || !list) return;
    const lines = list.querySelectorAll(`.line-pending[data-cid="${CSS.escape(cid)}"]`);
    let li = lines[lines.length - 1];
    if (!li) li = addPending(sentInputs.get(cid), cid, true);
    if (!li) return;
    li.classList.remove("line-unconfirmed"); // a reason now: not to be taken for the echo
    failLine(li, String(payload.reason || "Not sent."));
    scrollToBottom();
  }

  // --- sidebar: counts, states, refreshes ------------------------------------------------------
  function sidebarLink(id) {
    return sidebar && sidebar.querySelector(`a[data-channel-id="${Number(id)}"]`);
  }

  function bump(link, selector) {
    const badge = link.querySelector(selector);
    if (!badge) return;
    // The server counts unread lines up to 1,000 and shows "999+" from there.
    const count = Number(badge.textContent || 0);
    if (!Number.isNaN(count)) badge.textContent = count + 1 > 999 ? "999+" : String(count + 1);
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
        if (!Number.isNaN(when.getTime())) text += ` · retrying at ${clockText(when, true)}`;
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
    source.addEventListener("send_error", (event) => showSendError(JSON.parse(event.data)));
    // This account read a channel in some tab: its unread and highlight counts changed.
    source.addEventListener("read", () => {
      refreshSidebar();
      document.body.dispatchEvent(new CustomEvent("notifications-changed", { bubbles: true }));
    });
    // A line's link preview is ready: chat-previews.js fetches and shows it.
    source.addEventListener("preview", (event) => {
      document.dispatchEvent(new CustomEvent("palaver:preview", { detail: JSON.parse(event.data) }));
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

  // Opening a channel being joined: once it is in the sidebar (the gateway stored the join).
  function openWhenJoined(name) {
    const wanted = name.toLowerCase();
    const find = () => Array.from(document.querySelectorAll(`.chat-server[data-server-id="${serverId}"] a[data-channel-id]`))
      .find((a) => (a.dataset.name || "").toLowerCase() === wanted);
    const deadline = Date.now() + 15000;
    const check = () => {
      const link = find();
      if (link) { location.assign(link.href); return; }
      if (Date.now() < deadline) { refreshSidebar(); setTimeout(check, 500); }
    };
    check();
  }

  async function sendText(text) {
    if (!text.trim()) return false;
    const cid = newCid();
    const body = new FormData(form);
    body.set("text", text);
    body.set("cid", cid);
    // Shown (and its cid known) before the POST: the gateway's send_error can arrive on the
    // stream before the POST's answer does.
    sentInputs.set(cid, text);
    if (sentInputs.size > 50) sentInputs.delete(sentInputs.keys().next().value);
    const lines = text.split(/\r\n|\r|\n/).filter((l) => l.trim());
    const isCommand = lines.length === 1 && lines[0].startsWith("/") && !lines[0].startsWith("//");
    let pending = [];
    if (isCommand) pending = [addPending(lines[0], cid, true)];
    else if (live) pending = lines.map((l) => addPending(l.startsWith("//") ? l.slice(1) : l, cid));
    const unsent = () => {
      sentInputs.delete(cid);
      pending.forEach((li) => { if (li) li.remove(); });
    };
    let response;
    try {
      response = await post(form.action, body);
    } catch {
      unsent();
      errorBox.textContent = "Could not reach Palaver; nothing was sent.";
      return false;
    }
    if (response.status === 204) {
      errorBox.replaceChildren();
      const redirect = response.headers.get("HX-Redirect");
      if (redirect) { location.assign(redirect); return true; }
      const join = response.headers.get("X-Join");
      if (join) openWhenJoined(join);
      return true;
    }
    unsent();
    if (response.status === 403) {
      errorBox.textContent = "Your session has ended; reload the page to sign in again.";
      return false;
    }
    showError(await response.text());
    return false;
  }

  async function submit() {
    const text = input.value;
    if (!text.trim()) return;
    if (await sendText(text)) {
      rememberInput(text);
      if (input.value === text) setInput("");
    }
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

  // --- runs of joins, parts and quits: one summary line, the lines on demand -------------------
  if (list) list.addEventListener("click", (event) => {
    const toggle = event.target.closest(".run-toggle");
    if (!toggle) return;
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    list.querySelectorAll(`.in-run[data-run="${CSS.escape(toggle.dataset.run)}"]`).forEach((li) => { li.hidden = !open; });
    toggle.textContent = open ? "hide" : `show ${list.querySelectorAll(`.in-run[data-run="${CSS.escape(toggle.dataset.run)}"]`).length} lines`;
  });

  // --- the top bar's notification count ----------------------------------------------------------
  // Other pages keep it with htmx; this page loads no htmx (52 KB), so it does the same here:
  // after the page, when notifications change, and once a minute.
  const noteBadge = document.querySelector("[data-notification-badge]");
  const refreshNoteBadge = refresher(async () => {
    if (!noteBadge) return;
    try {
      noteBadge.replaceChildren(...parseFragment((await getFragment(noteBadge.dataset.notificationBadge)).html));
    } catch (error) {
      console.warn(error);
    }
  }, 200);
  document.body.addEventListener("notifications-changed", refreshNoteBadge);
  setInterval(refreshNoteBadge, 60000);
  refreshNoteBadge();

  // --- start -----------------------------------------------------------------------------------
  const target = data.targetId && document.getElementById(`m${Number(data.targetId)}`);
  const unreadDivider = document.getElementById("chat-unread");
  if (target) {
    target.classList.add("line-target");
    target.scrollIntoView({ block: "center" });
  } else {
    scrollToBottom();
    // More unread than fits: the first of them at the top, not the last at the bottom.
    if (unreadDivider) {
      const top = unreadDivider.getBoundingClientRect().top - list.getBoundingClientRect().top;
      if (top < 0) list.scrollTop += top - 8;
    }
  }
  watchOlder();
  setUpNotifyButton();
  connect();
  // Opening the page (a GET) changes nothing; showing the latest lines is what marks them read.
  markRead();
})();
