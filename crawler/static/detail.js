// One image: its thumbnail, its record, its position, the metadata object (the fields, then
// each EXIF section) and its near duplicates by pHash, with their distances.
import {
  bytes, cameraName, dateTime, dimensions, element, getJson, table, thumbnail, tile,
  titledSection,
} from "./dom.js";

const NEAR_DISTANCE = 10;
const NEAR_LIMIT = 50;

function record(image) {
  return table([
    ["Status", image.reason ? `${image.status} (${image.reason})` : image.status],
    ["Error", image.error],
    ["Format", image.format],
    ["Dimensions", dimensions(image)],
    ["File size", image.size === null ? "" : `${bytes(image.size)} (${image.size} bytes)`],
    ["Taken", dateTime(image.takenAt)],
    ["Camera", cameraName(image.make, image.model)],
    ["Fetched", dateTime(image.fetchedAt)],
    ["First seen", dateTime(image.firstSeenAt)],
    ["HTTP status", image.httpStatus],
    ["Final URL", image.finalUrl !== image.url ? image.finalUrl : ""],
    ["SHA-256", image.sha256],
    ["pHash", image.pHash],
    ["Warnings", image.warnings.join("\n")],
  ], "record");
}

function coordinates(gps) {
  const section = titledSection("gps", "Position");
  if (!gps) {
    section.append(element("p", "empty", "No GPS position in the EXIF."));
    return section;
  }
  const latitude = `${Math.abs(gps.latitude).toFixed(6)}° ${gps.latitude < 0 ? "S" : "N"}`;
  const longitude = `${Math.abs(gps.longitude).toFixed(6)}° ${gps.longitude < 0 ? "W" : "E"}`;
  section.append(element("p", "coordinates", `${latitude}, ${longitude}`));
  return section;
}

function shown(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function metadata(object) {
  const section = titledSection("metadata", "Metadata");
  if (!object) {
    section.append(element("p", "empty", "No metadata: the image was not extracted."));
    return section;
  }
  const isSection = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
  const entries = Object.entries(object);
  section.append(table(entries.filter(([, v]) => !isSection(v)).map(([k, v]) => [k, shown(v)]), "fields"));
  for (const [name, value] of entries.filter(([, v]) => isSection(v))) {
    for (const [part, fields] of Object.entries(value)) {
      if (!isSection(fields) || !Object.keys(fields).length) continue;
      section.append(element("h3", "", `${name}.${part}`));
      section.append(table(Object.entries(fields).map(([k, v]) => [k, shown(v)]), "exif"));
    }
  }
  return section;
}

async function nearDuplicates(image) {
  const section = titledSection("near", `Near duplicates (within ${NEAR_DISTANCE} bits)`);
  if (!image.pHash) {
    section.append(element("p", "empty", "No pHash: the image was not extracted."));
    return section;
  }
  const found = await getJson("/v1/similar", {
    phash: image.pHash, max_distance: NEAR_DISTANCE, limit: NEAR_LIMIT + 1,
  });
  const others = found.results.filter((other) => other.id !== image.id).slice(0, NEAR_LIMIT);
  const grid = element("div", "grid");
  grid.append(...others.map((other) => tile({ ...other, status: "ok" }, [`distance ${other.distance}`])));
  section.append(others.length ? grid : element("p", "empty", "None."));
  return section;
}

export async function showImage(argument, _params, status) {
  const image = await getJson(`/v1/images/${encodeURIComponent(argument)}`);
  status.textContent = "";
  const heading = element("h2", "url", image.url);
  const top = element("div", "detail");
  const picture = element("div", "picture");
  picture.append(thumbnail(image));
  top.append(picture, record(image));
  return [heading, top, coordinates(image.gps), await nearDuplicates(image), metadata(image.metadata)];
}
