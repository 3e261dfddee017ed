"use strict";
// Renders /v1/duplicates as groups of thumbnails. Built with DOM calls and textContent only,
// so a URL or name in the catalogue can never inject markup.

const WEB_URL = /^https?:\/\//i;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function thumbnail(image) {
  if (!WEB_URL.test(image.url)) {
    return element("div", "missing", "no web URL to show");
  }
  const img = element("img");
  img.src = image.url;
  img.alt = image.url;
  img.loading = "lazy";
  img.referrerPolicy = "no-referrer";
  return img;
}

function figure(image, first, exact) {
  const node = element("figure");
  node.dataset.id = image.id;
  node.append(thumbnail(image));
  const caption = element("figcaption");
  let distance = exact ? "same bytes" : `distance ${image.distance}`;
  if (first) distance = "first of group";
  caption.append(element("span", "distance", distance), ` · #${image.id}`);
  caption.append(element("br"));
  const link = element("a", "", image.url);
  if (WEB_URL.test(image.url)) link.href = image.url;
  link.rel = "noreferrer";
  caption.append(link, " · ");
  const metadata = element("a", "", "metadata");
  metadata.href = `/v1/files/${encodeURIComponent(image.id)}/metadata`;
  caption.append(metadata);
  node.append(caption);
  return node;
}

function group(entry, index) {
  const section = element("section", `group ${entry.kind}`);
  const what = entry.kind === "exact" ? "identical files (same SHA-256)" : "similar pHash";
  section.append(element("h2", "", `Group ${index + 1}: ${entry.images.length} images, ${what}`));
  const row = element("div", "images");
  const exact = entry.kind === "exact";
  entry.images.forEach((image, position) => row.append(figure(image, position === 0, exact)));
  section.append(row);
  return section;
}

async function show(maxDistance) {
  const status = document.getElementById("status");
  const groups = document.getElementById("groups");
  status.textContent = "Loading…";
  const response = await fetch(`/v1/duplicates?max_distance=${encodeURIComponent(maxDistance)}`,
    { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) {
    status.textContent = `Error ${response.status}: ${body.message}`;
    return;
  }
  groups.replaceChildren(...body.groups.map(group));
  const shown = body.groups.length < body.total_groups
    ? `the first ${body.groups.length} of ${body.total_groups} groups`
    : `${body.total_groups} groups`;
  status.textContent = body.total_groups
    ? `${shown} within ${body.max_distance} bits`
    : `No duplicates within ${body.max_distance} bits.`;
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("max-distance");
  const wanted = new URLSearchParams(location.search).get("max_distance");
  if (wanted !== null) input.value = wanted;
  document.getElementById("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState(null, "", `?max_distance=${encodeURIComponent(input.value)}`);
    show(input.value).catch((error) => { document.getElementById("status").textContent = String(error); });
  });
  show(input.value).catch((error) => { document.getElementById("status").textContent = String(error); });
});
