// Refreshes the parts of a dashboard page that show running work, and nothing else: each element
// with data-fragment is fetched again (its URL answers that part alone) and swapped in place, so a
// form being filled elsewhere on the page keeps what was typed. data-every: seconds until the
// first refresh (0: none); each answer's X-Refresh-After says when to ask again (0: what it shows
// has ended). A file, not an inline script, which the Content-Security-Policy forbids; without
// JavaScript the page is whole as served and its reload link refreshes it.
(function () {
  "use strict";

  function later(el, seconds) {
    if (seconds > 0) {
      window.setTimeout(function () { refresh(el); }, seconds * 1000);
    }
  }

  function refresh(el) {
    var every = Number(el.dataset.every) || 3;
    fetch(el.dataset.fragment, { credentials: "same-origin", headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          // logged out or gone (4xx): stop; the server or the network failing: try again, slower
          if (response.status >= 500) later(el, every * 2);
          return;
        }
        var next = Number(response.headers.get("X-Refresh-After") || 0);
        return response.text().then(function (html) {
          el.innerHTML = html;
          el.dataset.refreshed = String(Number(el.dataset.refreshed || 0) + 1);
          later(el, next);
        });
      })
      .catch(function () { later(el, every * 2); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-fragment]").forEach(function (el) {
      later(el, Number(el.dataset.every) || 0);
    });
  });
})();
