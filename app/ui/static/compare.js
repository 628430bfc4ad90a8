// The compare page: both models' test loss and accuracy per epoch on one chart (second model dashed).
import { PALETTE, historyData, lineChart } from "./charts.js";

const runs = JSON.parse(document.getElementById("history-data").textContent);
const series = runs.flatMap((run, i) => [
  { label: `${run.label} test loss`, scale: "loss", colour: PALETTE.loss, dash: i ? [6, 4] : [] },
  { label: `${run.label} test accuracy`, scale: "accuracy", colour: PALETTE.accuracy, dash: i ? [6, 4] : [] },
]);
lineChart(document.getElementById("history-chart"), { xLabel: "epoch", series, wholeX: true })
  .setData(historyData(runs, ["test_loss", "test_accuracy"]));
