// Horizontal bar charts in SVG, drawn from {label, value} pairs.
const SVG = "http://www.w3.org/2000/svg";
const BAR = 20;
const GAP = 6;
const LABEL_WIDTH = 220;
const BAR_WIDTH = 360;
const VALUE_WIDTH = 80;

function svgElement(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

export function barChart(bars) {
  const largest = Math.max(1, ...bars.map((bar) => bar.value));
  const height = bars.length * (BAR + GAP);
  const width = LABEL_WIDTH + BAR_WIDTH + VALUE_WIDTH;
  const svg = svgElement("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "bars",
  });
  bars.forEach((bar, row) => {
    const y = row * (BAR + GAP);
    const length = Math.max(1, Math.round((bar.value / largest) * BAR_WIDTH));
    const text = { y: y + BAR * 0.75, "font-size": 13 };
    svg.append(
      svgElement("text", { ...text, x: LABEL_WIDTH - 8, "text-anchor": "end" }, bar.label),
      svgElement("rect", { x: LABEL_WIDTH, y, width: bar.value ? length : 0, height: BAR }),
      svgElement("text", { ...text, x: LABEL_WIDTH + length + 6, class: "value" },
        bar.value.toLocaleString("en")),
    );
    svg.lastChild.previousSibling.append(svgElement("title", {}, `${bar.label}: ${bar.value}`));
  });
  return svg;
}
