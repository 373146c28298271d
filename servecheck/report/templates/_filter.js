// Search and filters: hide what does not match. State can come from the URL hash
// (#q=…&check=…&group=…) so a link can point at one slice of the report.
(function () {
  const q = document.getElementById("q");
  const check = document.getElementById("f-check");
  const group = document.getElementById("f-group");
  const items = document.querySelectorAll("[data-filter]");
  function matches(el, text, c, g) {
    if (text && "record" in el.dataset && !el.textContent.toLowerCase().includes(text)) return false;
    if (c && !(" " + el.dataset.checks + " ").includes(" " + c + " ")) return false;
    if (g && "group" in el.dataset && el.dataset.group !== g) return false;
    return true;
  }
  function apply() {
    const text = q.value.trim().toLowerCase(), c = check.value, g = group.value;
    let shown = 0;
    items.forEach(function (el) {
      const ok = matches(el, text, c, g);
      el.hidden = !ok;
      if (ok && "record" in el.dataset) shown++;
    });
    document.getElementById("shown").textContent = shown;
  }
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has("q")) q.value = hash.get("q");
  if (hash.has("check")) check.value = hash.get("check");
  if (hash.has("group")) group.value = hash.get("group");
  [q, check, group].forEach(function (el) { el.addEventListener("input", apply); });
  apply();
})();
