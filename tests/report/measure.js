// Measures every chart of the page as the browser laid it out and writes the result into the
// DOM (a pre element, id "measured", holding JSON), where --dump-dom returns it: the chart's box on screen,
// and each of its texts' box and rendered font size in CSS pixels.
(function () {
  function box(r) { return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; }
  const out = {viewport: [window.innerWidth, window.innerHeight], charts: []};
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    const texts = [];
    svg.querySelectorAll("text").forEach(function (t) {
      const m = t.getScreenCTM();
      const size = parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b);
      texts.push(Object.assign({text: t.textContent, px: size}, box(t.getBoundingClientRect())));
    });
    out.charts.push(Object.assign({cls: svg.getAttribute("class"), texts: texts},
                                  box(svg.getBoundingClientRect())));
  });
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
