// The duplicate groups of /v1/duplicates, each member a tile with its dimensions, size and
// date, and the copy to keep marked: the largest pixel count, then the largest file, then the
// first seen (the lowest id).
import { bytes, day, dimensions, element, getJson, tile } from "./dom.js";

const RULE = "The copy to keep has the most pixels; among equals the largest file; among " +
  "those the one catalogued first.";

function member(image, exact, first) {
  let distance = exact ? "same bytes" : `distance ${image.distance}`;
  if (first) distance = exact ? "" : "distances are from this one";
  const when = image.takenAt ? `taken ${day(image.takenAt)}` : "";
  const node = tile({ ...image, status: "ok" },
    [distance, `${dimensions(image)} · ${bytes(image.size)}`, when]);
  if (image.keep) {
    node.classList.add("keep");
    node.querySelector("figcaption").prepend(element("div", "badge", "keep"));
  }
  return node;
}

function group(entry, index) {
  const exact = entry.kind === "exact";
  const section = element("section", `group ${entry.kind}`);
  const what = exact ? "identical files (same SHA-256)" : "similar pHash";
  section.append(element("h2", "", `Group ${index + 1}: ${entry.images.length} images, ${what}`));
  const row = element("div", "grid");
  row.append(...entry.images.map((image, position) => member(image, exact, position === 0)));
  section.append(row);
  return section;
}

function controls(maxDistance) {
  const form = element("form", "filters");
  const label = element("label", "", "Max distance (bits)");
  const input = element("input");
  Object.assign(input, { name: "max_distance", type: "number", min: 0, max: 16, value: maxDistance });
  label.append(input);
  const submit = element("button", "", "Show");
  submit.type = "submit";
  form.append(label, submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/duplicates?max_distance=${encodeURIComponent(input.value)}`;
  });
  return form;
}

export async function showDuplicates(_argument, params, status) {
  const maxDistance = params.get("max_distance") || "10";
  const body = await getJson("/v1/duplicates", { max_distance: maxDistance });
  const shown = body.groups.length < body.total_groups
    ? `the first ${body.groups.length} of ${body.total_groups} groups`
    : `${body.total_groups} groups`;
  status.textContent = body.total_groups
    ? `${shown} within ${body.max_distance} bits`
    : `No duplicates within ${body.max_distance} bits.`;
  return [controls(maxDistance), element("p", "rule", RULE), ...body.groups.map(group)];
}
