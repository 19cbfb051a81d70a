// Ask for confirmation before submitting forms marked with data-confirm (no inline scripts: CSP).
document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// Access form: ticking a peer or typing an ID_KEY_ID selects "only these peers".
function selectListed(event) {
  var el = event.target;
  var form = el && el.form;
  if (!form || !form.classList.contains("access-form")) return;
  if ((el.type === "checkbox" && el.checked) || (el.id === "add_keyids" && el.value.trim())) {
    var listed = form.querySelector("#scope_listed");
    if (listed) listed.checked = true;
  }
}
document.addEventListener("change", selectListed);
document.addEventListener("input", selectListed);

// Peer list: poll the user's peers' presence (JSON) and rewrite the presence cells.
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function fillPresence(pid, p) {
  var cells = document.querySelectorAll('[data-presence="' + pid + '"]');
  cells.forEach(function (cell) {
    var f = cell.getAttribute("data-field");
    cell.textContent = "";
    if (f === "state") {
      cell.appendChild(el("span", "status presence-" + p.state, p.state));
    } else if (f === "last_seen") {
      cell.textContent = p.last_seen;
    } else if (f === "endpoint") {
      cell.textContent = p.endpoint || "\u2014";
      if (p.nat) cell.appendChild(el("span", "muted nat", "NAT: " + p.nat));
    } else if (f === "connections") {
      if (!p.connections.length) cell.textContent = "\u2014";
      p.connections.forEach(function (c) {
        var m = el("span", "mediation", c.peer + ": ");
        m.appendChild(el("span", "path path-" + c.path, c.path));
        m.appendChild(document.createTextNode(" "));
        m.appendChild(el("span", "muted", "since " + c.since));
        cell.appendChild(m);
      });
    }
  });
}
function pollPresence() {
  var report = document.getElementById("server-report");
  if (!report) return;
  var url = report.getAttribute("data-poll");
  var every = parseInt(report.getAttribute("data-interval"), 10) || 2000;
  function once() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (!r.ok || (r.headers.get("Content-Type") || "").indexOf("application/json") !== 0) {
          throw new Error(r.status === 200 ? "logged out" : "HTTP " + r.status);
        }
        return r.json();
      })
      .then(function (data) {
        report.textContent = data.server.message;
        Object.keys(data.peers).forEach(function (pid) { fillPresence(pid, data.peers[pid]); });
        setTimeout(once, every);
      })
      .catch(function (e) {
        report.textContent = "Presence not updated (" + e.message + "); reload the page.";
      });
  }
  setTimeout(once, every);
}
document.addEventListener("DOMContentLoaded", pollPresence);

// Copy buttons (data-copy = the id of the field whose text is copied).
document.addEventListener("click", function (event) {
  var btn = event.target.closest && event.target.closest("[data-copy]");
  if (!btn) return;
  var field = document.getElementById(btn.getAttribute("data-copy"));
  var out = document.getElementById("copy-result");
  if (!field) return;
  function done(ok) { if (out) out.textContent = ok ? "Copied." : "Copy failed: select the text and copy it."; }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(function () { done(true); }, function () { done(false); });
  } else {
    field.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    done(ok);
  }
});
