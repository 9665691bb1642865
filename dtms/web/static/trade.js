// DTMS web view, "/trade/{ticket}": the price chart (canvas, drawn here), the action journal
// and the state transitions; reloaded on each of the trade's events.
"use strict";

(() => {
  const { el, price, money, signClass, getJSON, when } = DTMS;
  const ticket = Number(location.pathname.split("/").pop());
  const COLORS = { up: "#3fb950", down: "#f85149", entry: "#58a6ff", sl: "#f85149", tp: "#3fb950",
                   grid: "#2a323c", text: "#8b96a3", action: "#d8dee6", state: "#d29922",
                   price: "#d8dee6" };
  let data = null;
  let timer = null;

  function fact(label, value, cls) {
    return el("div", {}, el("span", {}, label), el("b", { class: cls || "" }, value));
  }

  function showFacts() {
    const t = data.trade;
    const q = data.quote;
    const p = (x) => price(x, t.entry_price, data.digits);
    document.title = `DTMS · ${t.ticket} ${t.symbol}`;
    document.getElementById("title").replaceChildren(...[
      `${t.ticket} · ${t.symbol} ${t.direction} ${t.volume} `,
      el("span", { class: `state ${t.state}`, id: "state", "data-state": t.state }, t.state),
      t.paused ? el("span", { class: "flag", "data-flag": "paused" }, "paused") : null].filter(Boolean));
    const profit = q ? q.profit : (t.state === "CLOSED" ? t.profit : null);
    document.getElementById("facts").replaceChildren(...[
      fact("entry", p(t.entry_price)),
      fact("current price", q ? p(q.price) : p(t.close_price)),
      fact("SL (initial)", `${p(t.sl) || "none"} (${p(t.initial_sl) || "none"})`),
      fact("TP", p(t.tp) || "none"),
      fact("open P/L", money(profit), signClass(profit)),
      fact("R", q && q.r !== null ? q.r.toFixed(2) : "", q ? signClass(q.r) : ""),
      fact("score", t.score ? Number(t.score).toFixed(2) : ""),
      fact("owner / strategy", `${t.owner || "-"} / ${t.strategy_type || "-"}`),
      fact("registered", when(t.created_at)),
      t.closed_at ? fact("closed", `${when(t.closed_at)} (${t.close_reason})`) : null].filter(Boolean));
  }

  function showTables() {
    document.querySelector("#actions tbody").replaceChildren(...data.actions.map((a) =>
      el("tr", { "data-seq": a.seq },
        el("td", {}, a.seq), el("td", { class: "l" }, when(a.created_at)),
        el("td", { class: "l" }, a.kind), el("td", { class: "l" }, a.obligation),
        el("td", { class: "l" }, a.status), el("td", {}, a.retcode || ""),
        el("td", { class: "wrap" }, JSON.stringify(a.request)), el("td", { class: "wrap" }, a.reason),
        el("td", { class: "l" }, when(a.resolved_at)))));
    document.querySelector("#transitions tbody").replaceChildren(...data.transitions.map((t) =>
      el("tr", {}, el("td", { class: "l" }, when(t.at)), el("td", { class: "l" }, t.from_state || "-"),
        el("td", { class: `l state ${t.to_state}` }, t.to_state), el("td", { class: "wrap" }, t.reason))));
  }

  // -- the chart ---------------------------------------------------------------------------
  function draw() {
    const canvas = document.getElementById("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 1200;
    const height = canvas.clientHeight || 420;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const t = data.trade;
    const shift = (at) => at + data.server_offset_s;   // wall clock -> the bars' server time
    const bars = data.bars;   // [time, open, high, low, close, volume], oldest first
    const span = bars.length > 1 ? bars[1][0] - bars[0][0] : 60;
    const end = shift(t.closed_at || data.now);
    const x0 = bars.length ? bars[0][0] : shift(t.created_at) - 10 * span;
    const x1 = Math.max(bars.length ? bars[bars.length - 1][0] + span : end, end) + span;
    const levels = [t.entry_price, t.tp, ...data.sl_path.map((p) => p[1])].filter((v) => v > 0);
    if (data.quote) levels.push(data.quote.price);
    let lo = Math.min(...levels, ...bars.map((b) => b[3]));
    let hi = Math.max(...levels, ...bars.map((b) => b[2]));
    const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.001 || 1;
    lo -= pad; hi += pad;
    const left = 8, right = 70, top = 10, bottom = 22;
    const X = (s) => left + (s - x0) / (x1 - x0) * (width - left - right);
    const Y = (p) => top + (hi - p) / (hi - lo) * (height - top - bottom);
    let drawn = 0;

    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = COLORS.grid; g.fillStyle = COLORS.text; g.lineWidth = 1;
    for (let i = 0; i <= 5; i++) {   // price grid
      const p = lo + (hi - lo) * i / 5;
      g.beginPath(); g.moveTo(left, Y(p)); g.lineTo(width - right, Y(p)); g.stroke();
      g.fillText(price(p, t.entry_price, data.digits), width - right + 4, Y(p) + 4);
    }
    for (let i = 0; i <= 4; i++) {   // time axis (server time)
      const s = x0 + (x1 - x0) * i / 4;
      g.fillText(new Date(s * 1000).toISOString().slice(5, 16).replace("T", " "), X(s) - 30 + (i === 0 ? 30 : 0), height - 6);
    }
    const w = Math.max(1, (X(x0 + span) - X(x0)) * 0.7);
    for (const [s, o, h, l, c] of bars) {   // candles
      g.strokeStyle = g.fillStyle = c >= o ? COLORS.up : COLORS.down;
      g.beginPath(); g.moveTo(X(s + span / 2), Y(h)); g.lineTo(X(s + span / 2), Y(l)); g.stroke();
      g.fillRect(X(s + span / 2) - w / 2, Y(Math.max(o, c)), w, Math.max(1, Math.abs(Y(o) - Y(c))));
      drawn++;
    }
    const hline = (p, color, label, dash) => {
      if (!(p > 0)) return;
      g.strokeStyle = g.fillStyle = color; g.setLineDash(dash); g.beginPath();
      g.moveTo(X(shift(t.created_at)), Y(p)); g.lineTo(width - right, Y(p)); g.stroke();
      g.setLineDash([]); g.fillText(label, X(shift(t.created_at)) + 2, Y(p) - 3);
      drawn++;
    };
    hline(t.entry_price, COLORS.entry, "entry", [6, 4]);
    hline(t.tp, COLORS.tp, "TP", [6, 4]);
    if (data.sl_path.some((p) => p[1] > 0)) {   // the stop as DTMS moved it: a step line
      g.strokeStyle = COLORS.sl; g.lineWidth = 2; g.beginPath();
      let prev = null;
      for (const [at, sl] of data.sl_path) {
        const x = X(shift(at));
        if (prev === null) { if (sl > 0) g.moveTo(x, Y(sl)); }
        else if (sl > 0 && prev > 0) { g.lineTo(x, Y(prev)); g.lineTo(x, Y(sl)); }
        else if (sl > 0) g.moveTo(x, Y(sl));
        else if (prev > 0) g.lineTo(x, Y(prev));
        prev = sl;
      }
      if (!t.closed_at && prev > 0) g.lineTo(width - right, Y(prev));   // and on from now
      g.stroke(); g.lineWidth = 1; g.fillStyle = COLORS.sl;
      g.fillText("SL", X(shift(data.sl_path[0][0])) + 2, Y(data.sl_path[0][1] || t.sl) + 12);
      drawn++;
    }
    if (data.quote) {
      g.strokeStyle = COLORS.price; g.setLineDash([2, 3]); g.beginPath();
      g.moveTo(left, Y(data.quote.price)); g.lineTo(width - right, Y(data.quote.price)); g.stroke();
      g.setLineDash([]);
    }
    for (const m of data.marks) {   // actions (triangles) and state changes (dotted lines)
      const x = X(shift(m.at));
      if (m.type === "state") {
        g.strokeStyle = g.fillStyle = COLORS.state; g.setLineDash([2, 3]); g.beginPath();
        g.moveTo(x, top); g.lineTo(x, height - bottom); g.stroke(); g.setLineDash([]);
        g.save(); g.translate(x + 3, top + 4); g.rotate(Math.PI / 2); g.fillText(m.label, 0, 0); g.restore();
      } else {
        const y = top + 4;
        g.fillStyle = m.status === "done" ? COLORS.action : COLORS.down;
        g.beginPath(); g.moveTo(x, y + 10); g.lineTo(x - 5, y); g.lineTo(x + 5, y); g.closePath(); g.fill();
        g.fillText(`${m.seq} ${m.label}`, x + 6, y + 20);
      }
      drawn++;
    }
    canvas.dataset.drawn = String(drawn);
    canvas.dataset.bars = String(bars.length);
    document.getElementById("timeframe").textContent = data.timeframe
      ? `bars: ${data.timeframe}, server time` : `no bars: ${data.bars_error || "none"}`;
  }

  async function load() {
    try {
      const [status, trade] = await Promise.all([getJSON("/api/status"), getJSON(`/api/trade/${ticket}`)]);
      DTMS.showStatus(status);
      data = trade;
      showFacts(); showTables(); draw();
      DTMS.showError(null);
    } catch (err) {
      DTMS.showError(err);
      getJSON("/api/status").then(DTMS.showStatus).catch(() => {});
    }
  }

  function soon() { clearTimeout(timer); timer = setTimeout(load, 200); }
  window.addEventListener("resize", () => { if (data) draw(); });
  DTMS.stream(`/events?ticket=${ticket}`, {
    "trade.state": soon,
    "trade.updated": soon,
    quotes: (qs) => { if (data && qs[ticket]) { data.quote = qs[ticket]; showFacts(); draw(); } },
    status: DTMS.showStatus,
  }, load);
})();
