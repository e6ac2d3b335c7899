// The "Add a server" form: with a known network chosen, its address, port and TLS are filled in
// by the server (channels_app.forms.NETWORKS), so those fields are hidden; "Custom" shows them.
// Without this script every field shows and the form works the same.
(function () {
  "use strict";
  var network = document.getElementById("id_network");
  if (!network) return;
  var custom = ["id_host", "id_port", "id_tls", "id_tls_verify"];
  function fieldOf(id) {
    var input = document.getElementById(id);
    return input ? input.closest(".field") : null;
  }
  function update() {
    var isCustom = network.value === "custom";
    custom.forEach(function (id) {
      var field = fieldOf(id);
      if (!field || field.classList.contains("has-error")) return;
      field.hidden = !isCustom;
      field.style.display = isCustom ? "" : "none"; // .field's own display beats [hidden]
      // Not sent either: a hidden custom address must not contradict the network chosen.
      document.getElementById(id).disabled = !isCustom;
    });
    var name = document.getElementById("id_name");
    if (name && !isCustom) {
      var label = network.options[network.selectedIndex].text.replace(/ \(.*\)$/, "");
      name.placeholder = label;
    } else if (name) {
      name.placeholder = "";
    }
  }
  network.addEventListener("change", update);
  update();
})();
