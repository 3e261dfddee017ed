// The summary: the catalogue's counts from /v1/summary as SVG bar charts.
import { barChart } from "./charts.js";
import { bytes, cameraName, element, getJson, titledSection } from "./dom.js";

let cached = null;

// The filters' choices come from the same counts; they are read once per page load.
export function summaryOnce() {
  cached = cached || getJson("/v1/summary");
  return cached;
}

function sizeLabel(bucket) {
  if (bucket.to === null) return `≥ ${bytes(bucket.from)}`;
  return bucket.from ? `${bytes(bucket.from)} – ${bytes(bucket.to)}` : `< ${bytes(bucket.to)}`;
}

function cameraBars(cameras) {
  const bars = cameras.cameras.slice(0, 15).map((camera) => ({
    label: cameraName(camera.make, camera.model),
    value: camera.count,
  }));
  const rest = cameras.cameras.slice(15).reduce((sum, camera) => sum + camera.count, cameras.others);
  if (rest) bars.push({ label: "other cameras", value: rest });
  return bars;
}

function chart(id, title, bars, note) {
  const section = titledSection(id, title, "chart");
  section.append(bars.length ? barChart(bars) : element("p", "empty", note));
  return section;
}

export async function showSummary(_argument, _params, status) {
  cached = null;
  const summary = await summaryOnce();
  status.textContent = `${summary.total} images in the catalogue`;
  return [
    chart("by-status", "By status",
      summary.byStatus.map((entry) => ({ label: entry.status, value: entry.count })), "No images."),
    chart("by-format", "By format",
      summary.byFormat.map((entry) => ({ label: entry.format, value: entry.count })), "No images."),
    chart("by-camera", "By camera", cameraBars(summary.byCamera), "No camera in any EXIF."),
    chart("by-year", "By year taken",
      summary.byYearTaken.map((entry) => ({ label: String(entry.year), value: entry.count })),
      "No date taken in any EXIF."),
    chart("failures", "Failures by reason",
      summary.failuresByReason.map((entry) => ({
        label: `${entry.status}: ${entry.reason || "no reason"}`, value: entry.count,
      })), "No failed or skipped URLs."),
    chart("by-size", "By file size",
      summary.bySize.map((bucket) => ({ label: sizeLabel(bucket), value: bucket.count })), ""),
  ];
}
