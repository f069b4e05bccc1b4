// Polls the status of pending requests and repositories until they are done, then reloads.
// Served as a file (the Content-Security-Policy allows no inline script); holds no token.
"use strict";
(function () {
  const INTERVAL_MS = 2000;
  function poll(element) {
    const url = element.getAttribute("data-poll-url");
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        // The login ended (expired, logged out elsewhere): the reloaded page asks to log in
        // again, rather than this page polling in vain under a status that no longer moves.
        if (response.status === 401) { window.location.reload(); return; }
        return response.json().then(function (body) {
          if (response.status >= 500 || response.status === 429) { throw new Error("retry"); }
          if (!response.ok) { element.textContent = body.error || "unknown"; return; }
          // `html` is the text escaped by the server, its `commands` as <code>
          // (dashboard/wording.py).
          if (typeof body.html === "string") { element.innerHTML = body.html; }
          else if (body.text) { element.textContent = body.text; }
          if (body.done) { window.location.reload(); return; }
          window.setTimeout(function () { poll(element); }, INTERVAL_MS);
        });
      })
      .catch(function () { window.setTimeout(function () { poll(element); }, INTERVAL_MS * 2); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll-url]").forEach(function (element) {
      window.setTimeout(function () { poll(element); }, INTERVAL_MS);
    });
  });
})();
