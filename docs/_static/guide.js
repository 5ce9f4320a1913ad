// Code, output and table blocks that scroll (sideways, or down in a tall output)
// get keyboard focus, so readers who do not use a mouse can scroll them too
// (WCAG: scrollable-region-focusable).
function focusScrollablePre() {
  for (const pre of document.querySelectorAll("div.highlight pre, .rendered_html")) {
    if (pre.scrollWidth > pre.clientWidth || pre.scrollHeight > pre.clientHeight) {
      pre.tabIndex = 0;
    } else {
      pre.removeAttribute("tabindex");
    }
  }
}
document.addEventListener("DOMContentLoaded", focusScrollablePre);
window.addEventListener("resize", focusScrollablePre);
