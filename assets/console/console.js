// reportd console: the only script. It keeps `data-field` elements and the `html` parts
// (by element id) current by polling the page's JSON endpoint (body's data-poll) every
// 2 s, never while the tab is hidden, and asks for a confirmation that states the count
// before a bulk action.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  var url = document.body.getAttribute("data-poll");
  var busy = false;

  function apply(data) {
    var fields = data.fields || {};
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var key = el.getAttribute("data-field");
      if (Object.prototype.hasOwnProperty.call(fields, key)) {
        el.textContent = String(fields[key]);
      }
    });
    document.querySelectorAll("progress[data-bar]").forEach(function (el) {
      var value = fields[el.getAttribute("data-bar")];
      if (typeof value === "number") {
        el.value = value;
        el.textContent = value + "%";
      }
    });
    // Markup rendered on the server (charts as SVG, table rows), every value escaped
    // there. A table whose checkbox is ticked keeps its rows: a selection is never lost.
    var parts = data.html || {};
    Object.keys(parts).forEach(function (id) {
      var el = document.getElementById(id);
      if (!el || typeof parts[id] !== "string") { return; }
      if (el.querySelector("input[type=checkbox]:checked")) { return; }
      el.innerHTML = parts[id];
    });
  }

  function mark(text) {
    var live = document.getElementById("live");
    if (live) { live.textContent = text; }
  }

  function tick() {
    if (!url || busy || document.hidden) { return; }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (data) { apply(data); mark(""); })
      .catch(function (e) { mark("(live updates failing: " + e.message + ")"); })
      .then(function () { busy = false; });
  }

  if (url) {
    setInterval(tick, INTERVAL_MS);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { tick(); }
    });
  }

  document.querySelectorAll("input[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      box.form.querySelectorAll("input[name=ids][type=checkbox]").forEach(function (c) {
        c.checked = box.checked;
      });
    });
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      var button = event.submitter;
      var verb = (button && button.getAttribute("data-verb")) || "Apply to";
      var noun = form.getAttribute("data-confirm");
      var count;
      if (button && button.hasAttribute("data-all")) {
        count = Number(form.getAttribute("data-total") || "0");
      } else {
        count = form.querySelectorAll("input[name=ids]:checked, input[name=ids][type=hidden]").length;
      }
      if (count === 0) {
        event.preventDefault();
        window.alert("Select at least one " + noun + " first.");
        return;
      }
      var text = verb + " " + count + " " + noun + (count === 1 ? "" : "s") + "?";
      if (!window.confirm(text)) { event.preventDefault(); }
    });
  });
}());
