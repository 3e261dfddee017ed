// What every view uses: DOM building (textContent only, so nothing in the catalogue can
// inject markup), number and date formats, the API's JSON, and image tiles.

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// A section of a view, found by its id, under its heading.
export function titledSection(id, title, className = id) {
  const section = element("section", className);
  section.id = id;
  section.append(element("h2", "", title));
  return section;
}

export function link(text, href, className) {
  const node = element("a", className, text);
  node.href = href;
  return node;
}

export class ApiError extends Error {}

export async function getJson(path, params) {
  const query = params ? `?${new URLSearchParams(params)}` : "";
  const response = await fetch(`${path}${query}`, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) throw new ApiError(`${response.status}: ${body.message}`);
  return body;
}

const SIZE_UNITS = ["B", "KB", "MB", "GB"];

export function bytes(count) {
  if (count === null || count === undefined) return "";
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < SIZE_UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(value < 10 ? 1 : 0) : value} ${SIZE_UNITS[unit]}`;
}

export function dimensions(image) {
  return image.width && image.height ? `${image.width} × ${image.height}` : "";
}

export function cameraName(make, model) {
  return [make, model].filter((part) => part).join(" ");
}

export function day(iso) {
  return iso ? iso.slice(0, 10) : "";
}

export function dateTime(iso) {
  return iso ? iso.replace("T", " ").slice(0, 19) : "";
}

// The image's thumbnail, or a grey box that says why there is none (a failed crawl, or a
// catalogue made before thumbnails: `crawler run --refresh` makes them).
export function thumbnail(image) {
  if (image.status && image.status !== "ok") {
    return element("div", "missing", image.reason || image.status);
  }
  const img = element("img", "thumb");
  // Thumbnails are cached for a year: the file's digest in the URL lets a refreshed image's
  // new thumbnail through.
  const version = image.sha256 ? `?v=${image.sha256.slice(0, 16)}` : "";
  img.src = `/v1/files/${encodeURIComponent(image.id)}/thumbnail${version}`;
  img.alt = image.url || `image ${image.id}`;
  img.addEventListener("error", () => img.replaceWith(element("div", "missing", "no thumbnail")));
  return img;
}

// A tile: the thumbnail, linked to the image's detail view, over caption lines.
export function tile(image, lines) {
  const node = element("figure", "tile");
  node.dataset.id = image.id;
  const open = link("", `#/image/${encodeURIComponent(image.id)}`, "open");
  open.append(thumbnail(image));
  node.append(open);
  const caption = element("figcaption");
  for (const line of lines.filter((text) => text)) caption.append(element("div", "", line));
  node.append(caption);
  return node;
}

export function table(rows, className) {
  const body = element("tbody");
  for (const [name, value] of rows) {
    if (value === null || value === undefined || value === "") continue;
    const row = element("tr");
    row.append(element("th", "", name), element("td", "", value));
    body.append(row);
  }
  const node = element("table", className);
  node.append(body);
  return node;
}
