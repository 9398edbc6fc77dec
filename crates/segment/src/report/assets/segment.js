// The image grid of a `segment` report: pages of rows from the embedded JSON.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var PAGE = 60;
  var grid = document.getElementById("grid");
  var label = document.getElementById("page-label");
  var filterBox = document.getElementById("filter");
  var fullBox = document.getElementById("full");
  var rows = data.rows;
  var page = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function pct(f) { return (f * 100).toFixed(1) + "%"; }

  function figure(r) {
    var f = el("figure", "row");
    f.dataset.image = r[0];
    var img = el("img", "overlay");
    // lazy, but at once in the full-size view (a screenshot of it)
    img.loading = document.body.classList.contains("full") ? "eager" : "lazy";
    img.src = r[1];
    img.width = r[3];
    img.height = r[4];
    img.alt = "overlay of " + r[0];
    f.appendChild(img);
    var cap = el("figcaption");
    cap.appendChild(el("span", "name", r[0]));
    cap.appendChild(el("span", "ms", Math.round(r[7]) + " ms"));
    f.appendChild(cap);
    var ul = el("ul", "legend");
    r[5].forEach(function (c) {
      var cls = data.classes[c[0]];
      var li = el("li", "class");
      li.dataset.class = cls[0];
      li.dataset.fraction = String(c[1]);
      var sw = el("span", "swatch");
      sw.style.background = cls[1];
      li.appendChild(sw);
      li.appendChild(el("span", "cname", cls[0]));
      li.appendChild(el("span", "pct", pct(c[1])));
      ul.appendChild(li);
    });
    var bg = el("li", "background");
    bg.dataset.fraction = String(r[6]);
    var sw = el("span", "swatch");
    sw.style.background = "#000000";
    bg.appendChild(sw);
    bg.appendChild(el("span", "cname", "background"));
    bg.appendChild(el("span", "pct", pct(r[6])));
    ul.appendChild(bg);
    f.appendChild(ul);
    if (r[2]) {
      var d = el("details", "explain");
      d.appendChild(el("summary", null, "explanation"));
      var ex = el("img");
      ex.loading = "lazy";
      ex.src = r[2];
      ex.alt = "explanation of " + r[0];
      d.appendChild(ex);
      f.appendChild(d);
    }
    return f;
  }

  function matching() {
    var q = filterBox.value.trim().toLowerCase();
    if (!q) return data.rows;
    return data.rows.filter(function (r) {
      if (r[0].toLowerCase().indexOf(q) >= 0) return true;
      return r[5].some(function (c) { return data.classes[c[0]][0].toLowerCase().indexOf(q) >= 0; });
    });
  }

  function pages() { return Math.max(1, Math.ceil(rows.length / PAGE)); }

  function show() {
    page = Math.min(Math.max(page, 0), pages() - 1);
    grid.textContent = "";
    var frag = document.createDocumentFragment();
    rows.slice(page * PAGE, (page + 1) * PAGE).forEach(function (r) { frag.appendChild(figure(r)); });
    grid.appendChild(frag);
    label.textContent = "page " + (page + 1) + " of " + pages() + " (" + rows.length + " images)";
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages() - 1;
  }

  function readHash() {
    var h = location.hash.replace(/^#/, "").split("&");
    h.forEach(function (kv) {
      var p = kv.split("=");
      if (p[0] === "page") page = (parseInt(p[1], 10) || 1) - 1;
      if (p[0] === "full") fullBox.checked = true;
    });
    document.body.classList.toggle("full", fullBox.checked);
  }

  document.getElementById("prev").addEventListener("click", function () { page--; show(); });
  document.getElementById("next").addEventListener("click", function () { page++; show(); });
  filterBox.addEventListener("input", function () { rows = matching(); page = 0; show(); });
  fullBox.addEventListener("change", function () { document.body.classList.toggle("full", fullBox.checked); });
  readHash();
  show();
})();
