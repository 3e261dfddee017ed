// The catalogue browser: one view at a time, chosen by the URL's fragment
// (#/images?filters, #/image/ID, #/duplicates, #/summary), so that every view has a link.
import { element } from "./dom.js";
import { showGrid } from "./grid.js";
import { showImage } from "./detail.js";
import { showDuplicates } from "./duplicates.js";
import { showSummary } from "./summary.js";

const VIEWS = {
  images: showGrid,
  image: showImage,
  duplicates: showDuplicates,
  summary: showSummary,
};

function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, argument] = path.split("/");
  const view = VIEWS[name] ? name : "images";
  return { view, argument, params: new URLSearchParams(query || "") };
}

async function render() {
  const { view, argument, params } = route();
  const status = document.getElementById("status");
  const main = document.getElementById("view");
  document.body.dataset.view = view;
  delete document.body.dataset.ready;
  for (const tab of document.querySelectorAll("nav a")) {
    tab.classList.toggle("current", tab.dataset.view === view);
  }
  status.textContent = "Loading…";
  try {
    main.replaceChildren(...(await VIEWS[view](argument, params, status)));
  } catch (error) {
    main.replaceChildren(element("p", "error", String(error.message || error)));
    status.textContent = "";
  }
  document.body.dataset.ready = view;
}

window.addEventListener("hashchange", render);
render();
