// DTMS web view, "/restarts": the supervision tree's restart history, refreshed every 10 s.
"use strict";

(() => {
  const { el, getJSON, when } = DTMS;

  async function load() {
    try {
      const [status, page] = await Promise.all([getJSON("/api/status"), getJSON("/api/restarts?limit=1000")]);
      DTMS.showStatus(status);
      const rows = page.restarts.map((r) => el("tr", { "data-restart": r.id },
        el("td", { class: "l" }, when(r.at)), el("td", { class: "l" }, r.supervisor),
        el("td", { class: "l" }, r.child), el("td", { class: "l" }, r.kind),
        el("td", { class: "l" }, r.action), el("td", { class: "l" }, r.reason),
        el("td", {}, r.attempt), el("td", {}, Number(r.backoff_s).toFixed(2)),
        el("td", { class: "wrap" }, r.exception)));
      document.querySelector("#restarts tbody").replaceChildren(
        ...(rows.length ? rows : [el("tr", {}, el("td", { class: "l empty", colSpan: 9 }, "no restarts"))]));
      DTMS.showError(null);
    } catch (err) {
      DTMS.showError(err);
      getJSON("/api/status").then(DTMS.showStatus).catch(() => {});
    }
  }

  load();
  setInterval(load, 10000);
})();
