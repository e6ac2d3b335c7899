// A citation links to /knowledge/documents/<id>/#chunk-<n>; a long document shows its passages
// a page at a time, so when passage n is not on this page, open the page that holds it (on
// arrival, and when a link changes the fragment of the page already open).
(function () {
  "use strict";
  function findPassage() {
    var match = /^#chunk-(\d+)$/.exec(window.location.hash);
    if (!match || document.getElementById("chunk-" + match[1])) {
      return;
    }
    var params = new URLSearchParams(window.location.search);
    if (params.get("passage") === match[1]) {
      return; // already asked for it: the passage does not exist
    }
    params.delete("page");
    params.set("passage", match[1]);
    window.location.replace("?" + params.toString() + window.location.hash);
  }
  findPassage();
  window.addEventListener("hashchange", findPassage);
})();
