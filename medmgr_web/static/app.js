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
