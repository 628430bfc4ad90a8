// Line charts with uPlot (vendored, loaded as window.uPlot): loss on the left axis, accuracy (0..1) on the right.
// Series differ by dash as well as colour (Okabe–Ito palette), so no chart relies on colour alone.
export const PALETTE = { loss: "#0072B2", accuracy: "#D55E00", other: "#009E73", fourth: "#CC79A7" };
const HEIGHT = 280;

export function lineChart(element, { xLabel, series, wholeX = false }) {
  const ink = getComputedStyle(document.body).color;
  const grid = { stroke: "rgba(128, 128, 128, 0.25)", width: 1 };
  const axis = (extra) => ({ stroke: ink, grid, ticks: grid, ...extra });
  const options = {
    width: element.clientWidth || 600, height: HEIGHT,
    scales: { x: { time: false }, loss: { auto: true }, accuracy: { range: [0, 1] } },
    axes: [axis({ label: xLabel, ...(wholeX && { incrs: [1, 2, 5, 10, 20, 50] }) }), axis({ scale: "loss", label: "loss" }),
      axis({ scale: "accuracy", label: "accuracy", side: 1, grid: { show: false } })],
    series: [{ label: xLabel }, ...series.map((s) => ({
      label: s.label, scale: s.scale, stroke: s.colour, dash: s.dash || [], width: 2, spanGaps: true,
      points: { show: s.points ?? true, size: 5 },
      value: (u, v) => (v == null ? "–" : v.toFixed(4)),
    }))],
  };
  const plot = new window.uPlot(options, [[], ...series.map(() => [])], element);
  window.addEventListener("resize", () => plot.setSize({ width: element.clientWidth, height: HEIGHT }));
  return plot;
}

// Per-epoch series of one or more histories (lists of {epoch, train_loss, ...}) on one shared epoch axis.
export function historyData(runs, keys) {
  const epochs = [...new Set(runs.flatMap((run) => run.history.map((h) => h.epoch)))].sort((a, b) => a - b);
  const columns = runs.flatMap((run) => keys.map((key) => {
    const byEpoch = new Map(run.history.map((h) => [h.epoch, h[key]]));
    return epochs.map((e) => byEpoch.get(e) ?? null);
  }));
  return [epochs, ...columns];
}

export const EPOCH_SERIES = [
  { key: "train_loss", label: "train loss", scale: "loss", colour: PALETTE.loss, dash: [6, 4] },
  { key: "test_loss", label: "test loss", scale: "loss", colour: PALETTE.loss },
  { key: "train_accuracy", label: "train accuracy", scale: "accuracy", colour: PALETTE.accuracy, dash: [6, 4] },
  { key: "test_accuracy", label: "test accuracy", scale: "accuracy", colour: PALETTE.accuracy },
];
