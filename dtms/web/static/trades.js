// DTMS web view, "/": every trade grouped by state, kept live by /events.
"use strict";

(() => {
  const { el, price, money, signClass, getJSON } = DTMS;
  const STATES = ["HEALTHY", "WARNING_L1", "WARNING_L2", "HEDGED", "RECOVERING", "SUSPENDED",
                  "RELEASED", "CLOSED"];
  const trades = new Map();   // ticket -> the trade view
  const quotes = new Map();   // ticket -> {price, profit, r}
  const digits = {};          // symbol -> its digits
  let scheduled = false;
  let truncated = 0;          // the page size, when the server had more trades than it

  function row(t) {
    const q = quotes.get(t.ticket);
    const open = t.state !== "CLOSED" && t.state !== "RELEASED";
    const current = open ? (q ? q.price : null) : t.close_price;
    const profit = open ? (q ? q.profit : null) : (t.state === "CLOSED" ? t.profit : null);
    const r = open && q ? q.r : null;
    const d = digits[t.symbol];
    const p = (x) => price(x, t.entry_price, d);
    const flags = [];
    if (t.paused) flags.push(el("span", { class: "flag", "data-flag": "paused" }, "paused"));
    if (t.state === "SUSPENDED") flags.push(el("span", { class: "flag", "data-flag": "suspended" }, "suspended"));
    return el("tr", { "data-ticket": t.ticket, "data-state": t.state, "data-paused": t.paused ? "1" : "0" },
      el("td", { class: "l" }, el("a", { href: `/trade/${t.ticket}` }, t.ticket)),
      el("td", { class: "l", "data-col": "symbol" }, t.symbol),
      el("td", { class: "l" }, t.direction),
      el("td", {}, t.volume),
      el("td", {}, p(t.entry_price)),
      el("td", { "data-col": "price" }, current ? p(current) : ""),
      el("td", {}, p(t.sl)),
      el("td", {}, p(t.tp)),
      el("td", { class: signClass(profit), "data-col": "profit" }, money(profit)),
      el("td", { class: signClass(r), "data-col": "r" }, r === null || r === undefined ? "" : r.toFixed(2)),
      el("td", { class: `l state ${t.state}`, "data-col": "state" }, t.state),
      el("td", {}, Number(t.score || 0).toFixed(2)),
      el("td", { class: "l", "data-col": "flags" }, flags));
  }

  function render() {
    scheduled = false;
    const box = document.getElementById("trades");
    const groups = STATES.map((state) => [state, [...trades.values()].filter((t) => t.state === state)])
      .filter(([, list]) => list.length);
    if (!groups.length) {
      box.replaceChildren(el("p", { class: "empty" }, "no trades registered"));
      return;
    }
    const summary = el("p", { class: "legend", id: "summary" },
      `${trades.size} trades` + (truncated ? ` (the first ${truncated} by ticket, and those registered since)` : ""));
    box.replaceChildren(summary, ...groups.map(([state, list]) => el("section", { "data-group": state },
      el("h2", {}, `${state} `, el("span", { class: "count" }, `(${list.length})`)),
      el("table", { class: "trades" },
        el("thead", {}, el("tr", {}, ["ticket", "symbol", "dir"].map((h) => el("th", { class: "l" }, h)),
          ["volume", "entry", "price", "SL", "TP", "P/L", "R"].map((h) => el("th", {}, h)),
          el("th", { class: "l" }, "state"), el("th", {}, "score"), el("th", { class: "l" }, ""))),
        el("tbody", {}, list.sort((a, b) => a.ticket - b.ticket).map(row))))));
  }

  function later() {   // a burst of events renders once
    if (!scheduled) { scheduled = true; requestAnimationFrame(render); }
  }

  async function load() {
    try {
      const [status, page] = await Promise.all([getJSON("/api/status"), getJSON("/api/trades")]);
      DTMS.showStatus(status);
      trades.clear();
      for (const t of page.trades) trades.set(t.ticket, t);
      truncated = page.count >= page.limit ? page.limit : 0;
      Object.assign(digits, page.digits || {});
      quotes.clear();
      for (const [ticket, q] of Object.entries(page.quotes || {})) quotes.set(Number(ticket), q);
      DTMS.showError(null);
      render();
    } catch (err) {
      DTMS.showError(err);
      getJSON("/api/status").then(DTMS.showStatus).catch(() => {});
    }
  }

  const onTrade = (event) => { trades.set(event.ticket, event.trade); later(); };
  DTMS.stream("/events", {
    "trade.state": onTrade,
    "trade.updated": onTrade,
    quotes: (qs) => { for (const [ticket, q] of Object.entries(qs)) quotes.set(Number(ticket), q); later(); },
    status: (h) => { const was = document.getElementById("ready").textContent;
                     DTMS.showStatus(h);
                     if (h.ready && was === "not ready") load(); },
  }, load);
})();
