// One job's page: follows its Server-Sent Events, draws per-step and per-epoch curves, refreshes the summary.
import { EPOCH_SERIES, PALETTE, historyData, lineChart } from "./charts.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const root = document.getElementById("job");
const first = JSON.parse(document.getElementById("job-data").textContent);
const steps = [[], [], []];
const stepChart = lineChart(document.getElementById("step-chart"), {
  xLabel: "epoch",
  series: [{ label: "train loss", scale: "loss", colour: PALETTE.loss, points: false },
    { label: "train accuracy", scale: "accuracy", colour: PALETTE.accuracy, dash: [6, 4], points: false }],
});
const epochChart = lineChart(document.getElementById("epoch-chart"), { xLabel: "epoch", series: EPOCH_SERIES, wholeX: true });
const stepTable = document.getElementById("step-table");

function show(record) {
  const { progress, metrics } = record;
  const x = progress.steps ? progress.epoch - 1 + progress.step / progress.steps : 0;
  if (metrics && metrics.train_loss != null && progress.steps && !(x <= steps[0].at(-1))) {
    steps[0].push(x); steps[1].push(metrics.train_loss); steps[2].push(metrics.train_accuracy);
    stepChart.setData(steps);
    const row = stepTable.insertRow();
    for (const value of [x.toFixed(3), metrics.train_loss.toFixed(4), metrics.train_accuracy.toFixed(4)]) {
      const cell = row.insertCell(); cell.textContent = value; if (row.cells.length > 1) cell.className = "num";
    }
  }
  epochChart.setData(historyData([record], EPOCH_SERIES.map((s) => s.key)));
}

show(first);
if (!TERMINAL.has(first.status)) {
  const events = new EventSource(root.dataset.events);
  events.addEventListener("job", (event) => {
    const record = JSON.parse(event.data);
    show(record);
    window.htmx.trigger("#summary", "job-changed");
    if (TERMINAL.has(record.status)) events.close(); // the stream has ended: do not reconnect
  });
}
