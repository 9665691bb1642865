// DTMS web view: helpers shared by the pages (plain JS, no library).
"use strict";

const DTMS = (() => {
  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = body.error || {};
      throw new Error(`${response.status} ${err.code || ""}: ${err.message || response.statusText}`);
    }
    return body;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function digits(x) {
    const s = String(x);
    const dot = s.indexOf(".");
    return dot < 0 ? 0 : Math.min(5, s.length - dot - 1);
  }

  // A price with its symbol's digits (``digits`` from the server), else as many as ``like``
  // (the entry price) shows.
  function price(x, like, digitsOf) {
    if (x === null || x === undefined || x === 0) return "";
    const d = Number.isInteger(digitsOf) ? digitsOf : digits(like === undefined ? x : like);
    return Number(x).toFixed(d);
  }

  function money(x) {
    if (x === null || x === undefined) return "";
    return Number(x).toFixed(2);
  }

  function signClass(x) {
    return x > 0 ? "pos" : x < 0 ? "neg" : "";
  }

  function when(at) {
    if (!at) return "";
    const d = new Date(at * 1000);
    return d.toISOString().replace("T", " ").slice(0, 19);
  }

  // The header: readiness, the broker, and (when issue 15's account guard reports it in
  // health) the guard's state.
  function showStatus(h) {
    const ready = document.getElementById("ready");
    ready.textContent = h.ready ? "ready" : "not ready";
    ready.className = "badge " + (h.ready ? "good" : "bad");
    ready.title = h.not_ready || "";
    const broker = document.getElementById("broker");
    const b = h.broker || {};
    broker.textContent = b.connected
      ? `broker ${b.backend}: ${b.login || "?"}@${b.server || "?"}` : `broker ${b.backend || ""}: disconnected`;
    broker.className = "badge " + (b.connected ? "good" : "bad");
    broker.title = b.refused || "";
    // -- account guard (issue 15): health.guard = {locked, reason, since, until} ----------
    const guard = document.getElementById("guard");
    if (h.guard) {
      guard.hidden = false;
      guard.textContent = h.guard.locked ? `guard: LOCKED (${h.guard.reason || "?"})` : "guard: open";
      guard.className = "badge " + (h.guard.locked ? "bad" : "good");
      guard.title = h.guard.locked
        ? `since ${when(h.guard.since)}` + (h.guard.until ? `, until ${when(h.guard.until)}` : "") : "";
    } else {
      guard.hidden = true;
    }
    // ---------------------------------------------------------------------------------------
    document.getElementById("meta").textContent =
      `DTMS ${h.version} · ${h.active_trades} managed · up ${Math.round(h.uptime_s)} s` +
      (h.ready ? "" : ` · ${h.not_ready || ""}`);
  }

  function showError(err) {
    const box = document.getElementById("error");
    if (box) box.textContent = err ? String(err.message || err) : "";
  }

  // An EventSource that reloads the page's data after every (re)connect, so events missed
  // while it was away are not missed on screen.
  function stream(url, handlers, reload) {
    const source = new EventSource(url);
    source.onopen = () => { showError(null); reload(); };
    source.onerror = () => showError("live updates interrupted; reconnecting...");
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => handler(JSON.parse(event.data)));
    }
    return source;
  }

  return { getJSON, el, price, money, signClass, when, showStatus, showError, stream };
})();
