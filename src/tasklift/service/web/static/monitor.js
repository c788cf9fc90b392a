// tasklift web monitor: refresh a page's live part while something runs; retry and cancel.
// No framework, no third-party code: fetch() the same page with ?partial=1 every few seconds.
(function () {
  "use strict";

  var POLL_MS = 2500;
  var live = document.querySelector("[data-live]");
  var timer = null;
  var busy = false;

  function announce(text) {
    var box = document.getElementById("announce");
    if (box) { box.textContent = text; }
  }

  function isRunning() {
    var root = live && live.querySelector("[data-running]");
    return !!root && root.getAttribute("data-running") === "1";
  }

  function partialUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    return url.toString();
  }

  function focusKey(el) {
    if (!el || !live || !live.contains(el)) { return null; }
    return el.id ? "#" + el.id
      : el.getAttribute("data-action") ? "[data-action=\"" + el.getAttribute("data-action") + "\"]"
      : el.getAttribute("href") ? "[href=\"" + el.getAttribute("href") + "\"]" : null;
  }

  function swap(html) {
    var key = focusKey(document.activeElement);
    live.innerHTML = html;
    live.setAttribute("data-refreshed", String(Date.now()));
    if (key) {
      var again = live.querySelector(key);
      if (again && typeof again.focus === "function") { again.focus({ preventScroll: true }); }
    }
  }

  function schedule() {
    if (timer !== null) { window.clearTimeout(timer); }
    timer = isRunning() ? window.setTimeout(tick, POLL_MS) : null;
  }

  function tick() {
    timer = null;
    if (document.hidden) { timer = window.setTimeout(tick, POLL_MS); return; }
    refresh();
  }

  function refresh() {
    if (!live || busy) { return Promise.resolve(); }
    busy = true;
    return fetch(partialUrl(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (resp) {
        if (resp.status === 401) {
          window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
          return null;
        }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) { if (html !== null) { swap(html); } })
      .catch(function () { /* the server is away: try again on the next tick */ })
      .then(function () { busy = false; schedule(); });
  }

  function act(button) {
    var question = button.getAttribute("data-confirm") || "Are you sure?";
    if (!window.confirm(question)) { return; }
    button.disabled = true;
    fetch(button.getAttribute("data-url"), {
      method: "POST", credentials: "same-origin", headers: { "Accept": "application/json" }
    }).then(function (resp) {
      if (resp.ok) {
        announce(button.getAttribute("data-done") || "Done.");
        return null;
      }
      return resp.json().catch(function () { return {}; }).then(function (body) {
        announce("Refused: " + (body.detail || resp.status));
        window.alert("The server refused: " + (body.detail || resp.status));
      });
    }).catch(function () {
      announce("The server did not answer.");
    }).then(function () {
      // the work runs again (or stopped): show it now and poll while it runs
      var root = live && live.querySelector("[data-running]");
      if (root) { root.setAttribute("data-running", "1"); }
      refresh();
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-action]") : null;
    if (button && !button.disabled) { event.preventDefault(); act(button); }
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && isRunning() && timer === null && !busy) { refresh(); }
  });

  if (live) { schedule(); }
}());
