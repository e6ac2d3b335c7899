// Drawers: side panels that become drawers on a narrow screen (the chat's servers and channels,
// its member list, and on a phone the site's own header and nav). Also the topic's "more".
//
// A drawer is an element with class "drawer" and data-drawer-media, the media query under which
// it is a drawer; a toggle is a button with data-drawer-toggle (the drawer's id) and
// aria-controls. Closed, CSS keeps a drawer visibility:hidden, so it is out of the Tab order and
// of the accessibility tree. Opening one moves focus into it, shows the backdrop and makes the
// rest of the page inert (a modal drawer: Tab stays inside); Escape, the backdrop, the close
// control or a swipe toward its edge close it, set aria-expanded back to false and return focus
// to the toggle. No framework, nothing from the network.
(() => {
  "use strict";

  const backdrop = document.getElementById("drawer-backdrop");
  // A child of <body>, so that making the rest of the page inert never reaches it.
  if (backdrop && backdrop.parentElement !== document.body) document.body.append(backdrop);
  const toggles = Array.from(document.querySelectorAll("[data-drawer-toggle]"));
  const drawers = Array.from(document.querySelectorAll(".drawer[data-drawer-media]"));
  const SWIPE = 60; // px toward the drawer's edge that closes it
  const EDGE = 24; // px from the screen's left edge where a swipe opens the sidebar
  let current = null; // { drawer, toggle }
  let madeInert = [];

  const isDrawer = (drawer) => window.matchMedia(drawer.dataset.drawerMedia || "not all").matches;
  const togglesFor = (drawer) => toggles.filter((t) => t.dataset.drawerToggle === drawer.id);
  const isStart = (drawer) => drawer.classList.contains("drawer-start");

  function focusInside(drawer) {
    const target = drawer.querySelector("[aria-current='page']")
      || drawer.querySelector("a[href], button:not([hidden]):not([data-drawer-close]), input, select, textarea")
      || drawer.querySelector("[data-drawer-close]");
    if (target) target.focus({ preventScroll: true });
  }

  // Everything but the open drawer (and the backdrop) inert: each ancestor's other children.
  function inertAround(drawer) {
    madeInert = [];
    let node = drawer;
    while (node && node !== document.body) {
      const parent = node.parentElement;
      if (!parent) break;
      Array.from(parent.children).forEach((sibling) => {
        if (sibling === node || sibling === backdrop || sibling.inert) return;
        if (sibling.tagName === "SCRIPT" || sibling.tagName === "LINK") return;
        sibling.inert = true;
        madeInert.push(sibling);
      });
      node = parent;
    }
  }

  function releaseInert() {
    madeInert.forEach((node) => { node.inert = false; });
    madeInert = [];
  }

  function open(drawer, toggle) {
    if (current) close({ returnFocus: false });
    drawer.classList.add("open");
    togglesFor(drawer).forEach((t) => t.setAttribute("aria-expanded", "true"));
    if (backdrop) backdrop.hidden = false;
    current = { drawer, toggle };
    inertAround(drawer);
    focusInside(drawer);
  }

  function close({ returnFocus = true } = {}) {
    if (!current) return;
    const { drawer, toggle } = current;
    current = null;
    releaseInert();
    drawer.classList.remove("open");
    togglesFor(drawer).forEach((t) => t.setAttribute("aria-expanded", "false"));
    if (backdrop) backdrop.hidden = true;
    if (returnFocus && toggle && toggle.isConnected) toggle.focus({ preventScroll: true });
  }

  toggles.forEach((toggle) => {
    toggle.addEventListener("click", () => {
      const drawer = document.getElementById(toggle.dataset.drawerToggle);
      if (!drawer) return;
      if (current && current.drawer === drawer) close();
      else open(drawer, toggle);
    });
  });
  drawers.forEach((drawer) => {
    drawer.querySelectorAll("[data-drawer-close]").forEach((button) => {
      button.addEventListener("click", () => close());
    });
    // Leaving drawer width (a rotated phone, a resized window) with it open: back to normal.
    window.matchMedia(drawer.dataset.drawerMedia || "not all").addEventListener("change", () => {
      if (current && current.drawer === drawer && !isDrawer(drawer)) close({ returnFocus: false });
    });
  });
  if (backdrop) backdrop.addEventListener("click", () => close());
  const FOCUSABLE = "a[href], button:not([disabled]), input:not([disabled]), select, textarea, [tabindex]:not([tabindex='-1'])";
  document.addEventListener("keydown", (event) => {
    if (!current) return;
    if (event.key === "Escape") {
      event.preventDefault();
      close();
    } else if (event.key === "Tab") {
      // Tab goes round inside the open drawer (the page behind it is inert).
      const stops = Array.from(current.drawer.querySelectorAll(FOCUSABLE))
        .filter((el) => !el.hidden && el.getClientRects().length);
      if (!stops.length) return;
      const first = stops[0];
      const last = stops[stops.length - 1];
      const inside = current.drawer.contains(document.activeElement);
      if (event.shiftKey && (!inside || document.activeElement === first)) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && (!inside || document.activeElement === last)) {
        event.preventDefault();
        first.focus();
      }
    }
  });

  // --- swipe: toward its edge closes a drawer; from the left edge opens the sidebar ------------
  let touch = null;
  document.addEventListener("touchstart", (event) => {
    if (event.touches.length !== 1) { touch = null; return; }
    const { clientX, clientY } = event.touches[0];
    touch = { x: clientX, y: clientY };
  }, { passive: true });
  document.addEventListener("touchend", (event) => {
    if (!touch) return;
    const end = event.changedTouches[0];
    const dx = end.clientX - touch.x;
    const dy = end.clientY - touch.y;
    const startX = touch.x;
    touch = null;
    if (Math.abs(dx) < SWIPE || Math.abs(dy) > Math.abs(dx)) return;
    if (current) {
      if ((isStart(current.drawer) && dx < 0) || (!isStart(current.drawer) && dx > 0)) close();
      return;
    }
    const sidebar = document.getElementById("chat-sidebar-drawer");
    if (sidebar && dx > 0 && startX <= EDGE && isDrawer(sidebar)) {
      open(sidebar, togglesFor(sidebar)[0] || null);
    }
  }, { passive: true });

  // --- focus kept across refreshes ---------------------------------------------------------------
  // chat.js replaces the sidebar's and the member list's contents when they change: a link that
  // had keyboard focus is replaced by its copy, and focus would fall to <body> (out of an open
  // drawer, too). The copy (same href, or id) gets it back.
  ["chat-sidebar", "chat-members"].forEach((id) => {
    const panel = document.getElementById(id);
    if (!panel) return;
    let key = null;
    const keyOf = (el) => el.getAttribute("href") || el.id || null;
    panel.addEventListener("focusin", (event) => { key = keyOf(event.target); });
    panel.addEventListener("focusout", (event) => {
      // Still in the page: the user moved focus on, and nothing is to be restored.
      const left = event.target;
      setTimeout(() => { if (left.isConnected) key = null; }, 0);
    });
    new MutationObserver(() => {
      const active = document.activeElement;
      if (!key || (active && active !== document.body)) return;
      const copy = Array.from(panel.querySelectorAll("a[href], button, [id]")).find((el) => keyOf(el) === key);
      if (copy) copy.focus({ preventScroll: true });
      else if (current && current.drawer.contains(panel)) focusInside(current.drawer);
    }).observe(panel, { childList: true, subtree: true });
  });

  // --- the topic: cut to one line, "more" shows all of it (by keyboard too) ---------------------
  const topic = document.getElementById("chat-topic");
  const more = document.querySelector(".topic-more[aria-controls='chat-topic']");
  function setExpanded(expanded) {
    topic.classList.toggle("expanded", expanded);
    if (more) {
      more.setAttribute("aria-expanded", String(expanded));
      more.firstChild.textContent = expanded ? "less" : "more";
    }
  }
  function updateMore() {
    if (!topic || !more) return;
    const cut = topic.scrollWidth > topic.clientWidth + 1;
    more.hidden = !cut && !topic.classList.contains("expanded");
  }
  if (topic) {
    topic.addEventListener("click", (event) => {
      if (!event.target.closest("a")) setExpanded(!topic.classList.contains("expanded"));
      updateMore();
    });
    if (more) more.addEventListener("click", () => { setExpanded(!topic.classList.contains("expanded")); updateMore(); });
    // The topic is replaced when it changes (chat.js): whether it is cut may change too.
    new MutationObserver(updateMore).observe(topic, { childList: true, subtree: true, characterData: true });
    window.addEventListener("resize", updateMore);
    updateMore();
  }
})();
