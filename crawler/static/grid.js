// The grid: filters (each one a parameter of /v1/images), a page of tiles, and links to the
// next page (a cursor: pages stay as fast deep in the catalogue as at its start).
import { bytes, cameraName, day, dimensions, element, getJson, link, tile } from "./dom.js";
import { summaryOnce } from "./summary.js";

const FILTERS = ["status", "format", "make", "model", "taken_from", "taken_to", "gps", "url"];
const SORTS = { newest: "newest first", largest: "largest file first", taken: "latest taken first" };
const STATUSES = ["ok", "failed", "skipped", "pending"];
const DEFAULTS = { status: "ok", sort: "newest" };
const PAGE_SIZE = 60;
// A request with URL text, or whose query would take too long, covers only a slice of the
// catalogue (a page short of images, with a cursor to go on): a page asks for up to this
// many slices to fill itself.
const MAX_SLICES = 10;

function wanted(params) {
  const chosen = { ...DEFAULTS };
  for (const name of [...FILTERS, "sort", "after"]) {
    if (params.has(name)) chosen[name] = params.get(name);
  }
  return chosen;
}

function setOptions(node, options, value) {
  node.replaceChildren(...options.map(([optionValue, text]) => {
    const option = element("option", "", text);
    option.value = optionValue;
    option.selected = optionValue === (value || "");
    return option;
  }));
}

function select(name, label, options, value) {
  const node = element("select");
  node.name = name;
  setOptions(node, options, value);
  const wrapper = element("label", "", label);
  wrapper.append(node);
  return wrapper;
}

function input(name, label, type, value) {
  const node = element("input");
  node.name = name;
  node.type = type;
  node.value = value || "";
  const wrapper = element("label", "", label);
  wrapper.append(node);
  return wrapper;
}

function orAny(entries) {
  return [["", "any"], ...entries];
}

function formatEntries(summary) {
  return summary.byFormat.map((entry) => [entry.format, `${entry.format} (${entry.count})`]);
}

function cameraEntries(summary) {
  return summary.byCamera.cameras.map((camera) => [
    JSON.stringify([camera.make, camera.model]),
    `${cameraName(camera.make, camera.model)} (${camera.count})`,
  ]);
}

// The format and camera choices come from /v1/summary, which takes a while on a large
// catalogue: the grid does not wait for them.
async function fillChoices(node, chosen, camera) {
  const summary = await summaryOnce();
  setOptions(node.format, orAny(formatEntries(summary)), chosen.format);
  setOptions(node.camera, orAny(cameraEntries(summary)), camera);
  node.dataset.choices = "loaded";
}

function form(chosen) {
  const node = element("form", "filters");
  node.id = "filters";
  const camera = chosen.make ? JSON.stringify([chosen.make, chosen.model || null]) : "";
  // Until the summary's choices arrive, each offers the one chosen.
  const format = chosen.format ? [[chosen.format, chosen.format]] : [];
  const cameras = camera ? [[camera, cameraName(chosen.make, chosen.model)]] : [];
  node.append(
    select("status", "Status", orAny(STATUSES.map((s) => [s, s])), chosen.status),
    select("format", "Format", orAny(format), chosen.format),
    select("camera", "Camera", orAny(cameras), camera),
    input("taken_from", "Taken from", "date", chosen.taken_from),
    input("taken_to", "to", "date", chosen.taken_to),
    select("gps", "GPS", orAny([["true", "with GPS"], ["false", "without"]]), chosen.gps),
    input("url", "URL contains", "search", chosen.url),
    select("sort", "Sort", Object.entries(SORTS), chosen.sort),
  );
  const submit = element("button", "", "Show");
  submit.type = "submit";
  node.append(submit);
  node.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/images?${formQuery(new FormData(node))}`;
  });
  fillChoices(node, chosen, camera).catch(() => { node.dataset.choices = "failed"; });
  return node;
}

function formQuery(data) {
  const query = new URLSearchParams();
  for (const [name, value] of data.entries()) {
    if (name === "camera") {
      if (!value) continue;
      const [make, model] = JSON.parse(value);
      query.set("make", make);
      if (model) query.set("model", model);
    } else {
      query.set(name, value);
    }
  }
  return query;
}

function apiQuery(chosen) {
  const query = {};
  for (const [name, value] of Object.entries(chosen)) if (value) query[name] = value;
  return query;
}

function pageLinks(chosen, next) {
  const nav = element("nav", "pages");
  const query = new URLSearchParams(apiQuery(chosen));
  query.delete("after");
  if (chosen.after) nav.append(link("« First page", `#/images?${query}`, "first"));
  if (next) {
    query.set("after", next);
    nav.append(link("Next page »", `#/images?${query}`, "next"));
  }
  return nav;
}

function caption(image) {
  const when = image.takenAt ? `taken ${day(image.takenAt)}` : `fetched ${day(image.fetchedAt)}`;
  return [`${dimensions(image)} · ${bytes(image.size)}`, `${image.format || ""} · ${when}`];
}

async function fetchPage(chosen) {
  const images = [];
  let page = { next: chosen.after };
  for (let slice = 0; slice < MAX_SLICES; slice += 1) {
    const query = { ...chosen, after: page.next, limit: PAGE_SIZE - images.length };
    page = await getJson("/v1/images", apiQuery(query));
    images.push(...page.images);
    if (!page.next || images.length >= PAGE_SIZE) break;
  }
  return { images, next: page.next };
}

export async function showGrid(_argument, params, status) {
  const chosen = wanted(params);
  const page = await fetchPage(chosen);
  const grid = element("div", "grid");
  grid.id = "grid";
  grid.append(...page.images.map((image) => tile(image, caption(image))));
  status.textContent = page.images.length
    ? `${page.images.length} images${page.next ? ", more on the next page" : ""}`
    : "No images match on this page.";
  if (page.next && page.images.length < PAGE_SIZE) {
    status.textContent = `${page.images.length} images found so far: the next page searches on`;
  }
  return [form(chosen), grid, pageLinks(chosen, page.next)];
}
