// One sweep's page: the sortable trials table, the metric against each numeric parameter (uPlot scatters, log x
// where the space asked for it) and every trial's metric per epoch, redrawn each time htmx swaps the live part.
import { PALETTE } from "./charts.js";

// Okabe–Ito, then dashes: a trial's line differs from its neighbours by more than colour.
const COLOURS = [PALETTE.loss, PALETTE.accuracy, PALETTE.other, PALETTE.fourth, "#E69F00", "#56B4E9", "#000000"];
const HEIGHT = 280;
const data = () => JSON.parse(document.getElementById("sweep-data").textContent);
const ink = () => getComputedStyle(document.body).color;
const grid = { stroke: "rgba(128, 128, 128, 0.25)", width: 1 };
// A log axis labels its powers of ten only (1e-5, 1e-4, …, 0.01), so the minor ticks stay unlabelled.
const powers = (v) => (v == null || Math.abs(Math.log10(v) % 1) > 1e-9 ? "" : (v >= 0.001 ? String(v) : v.toExponential(0)));
const fixed = (v) => (v == null ? "–" : Number(v).toPrecision(4));

function plot(element, { x, y, series }) {
  const axis = (extra) => ({ stroke: ink(), grid, ticks: grid, ...extra });
  const options = {
    width: element.clientWidth || 600, height: HEIGHT,
    scales: { x: { time: false, ...(x.log && { distr: 3, log: 10 }) }, y: { auto: true } },
    axes: [axis({ label: x.label, ...(x.log && { values: (u, splits) => splits.map(powers) }),
      ...(x.whole && { incrs: [1, 2, 5, 10, 20, 50] }) }),
      axis({ scale: "y", label: y })],
    series: [{ label: x.label, value: (u, v) => fixed(v) }, ...series.map((s) => ({ scale: "y", width: 2,
      value: (u, v) => fixed(v), spanGaps: true, ...s }))],
  };
  const chart = new window.uPlot(options, [[], ...series.map(() => [])], element);
  window.addEventListener("resize", () => chart.setSize({ width: element.clientWidth, height: HEIGHT }));
  return chart;
}

// A scatter on uPlot's aligned data: x sorted, one column per series with gaps (null) where another owns the point.
function scatterData(trials, name) {
  const points = trials.filter((t) => t.metric != null && typeof t.config[name] === "number")
    .sort((a, b) => a.config[name] - b.config[name]);
  return [points.map((t) => t.config[name]), points.map((t) => (t.stopped ? null : t.metric)),
    points.map((t) => (t.stopped ? t.metric : null))];
}

function curvesData(trials) {
  const epochs = [...new Set(trials.flatMap((t) => t.curve.map(([epoch]) => epoch)))].sort((a, b) => a - b);
  return [epochs, ...trials.map((t) => {
    const byEpoch = new Map(t.curve);
    return epochs.map((e) => byEpoch.get(e) ?? null);
  })];
}

const first = data();
const label = first.metric.replaceAll("_", " ");
const noLine = () => null;
const scatters = [...document.querySelectorAll(".chart.scatter")].map((element) => ({
  name: element.dataset.parameter,
  chart: plot(element, { x: { label: element.dataset.parameter, log: element.dataset.log === "true" }, y: label,
    series: [
      { label: "ran its epochs", stroke: PALETTE.loss, paths: noLine, points: { show: true, size: 9, fill: PALETTE.loss } },
      { label: "stopped early", stroke: PALETTE.accuracy, paths: noLine, points: { show: true, size: 9, width: 2 } },
    ] }),
}));
const curves = plot(document.getElementById("curves-chart"), { x: { label: "epoch", whole: true }, y: label,
  series: first.trials.map((t, i) => ({ label: `trial ${t.trial}`, stroke: COLOURS[i % COLOURS.length],
    dash: t.stopped ? [6, 4] : [], points: { show: true, size: 5 } })) });

function draw() {
  const { trials } = data();
  for (const { name, chart } of scatters) chart.setData(scatterData(trials, name));
  trials.forEach((t, i) => { curves.series[i + 1].dash = t.stopped ? [6, 4] : []; });
  curves.setData(curvesData(trials));
}

// Sorting: a header's button orders the rows by that column (numbers as numbers, gaps last); a second click reverses.
let sorted = null;
function sortTable() {
  const table = document.getElementById("trials-table");
  if (!table || !sorted) return;
  const headers = [...table.tHead.rows[0].cells];
  headers.forEach((th, i) => (i === sorted.column
    ? th.setAttribute("aria-sort", sorted.ascending ? "ascending" : "descending") : th.removeAttribute("aria-sort")));
  const key = (row) => {
    const cell = row.cells[sorted.column];
    const raw = cell.dataset.sort ?? cell.textContent.trim();
    return raw === "" || raw === "–" ? null : (Number.isNaN(Number(raw)) ? raw : Number(raw));
  };
  const rows = [...table.tBodies[0].rows].sort((a, b) => {
    const [x, y] = [key(a), key(b)];
    if (x === null || y === null) return (x === null) - (y === null);
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return sorted.ascending ? order : -order;
  });
  table.tBodies[0].append(...rows);
}
document.addEventListener("click", (event) => {
  const button = event.target.closest("#trials-table button.sort");
  if (!button) return;
  const column = button.closest("th").cellIndex;
  sorted = { column, ascending: sorted?.column === column ? !sorted.ascending : true };
  sortTable();
});

draw();
let running = first.status === "running";
document.body.addEventListener("htmx:afterSettle", (event) => {
  if (event.target.id !== "sweep-live") return;
  draw(); sortTable();
  if (running && data().status !== "running") { // the last swap: the replicates are all in, so ask again
    running = false;
    window.htmx.trigger("#similarity", "sweep-ended");
  }
});
