// One model's page: the history chart, and the drawing pad whose image (or an upload) the model classifies.
import { EPOCH_SERIES, historyData, lineChart } from "./charts.js";

const runs = JSON.parse(document.getElementById("history-data").textContent);
lineChart(document.getElementById("history-chart"), { xLabel: "epoch", series: EPOCH_SERIES, wholeX: true })
  .setData(historyData(runs, EPOCH_SERIES.map((s) => s.key)));

// The snapshot slider: its last position is the final model; the others are the kept epochs, which every analysis
// below follows (htmx asks again on the form's change, with the hidden epoch).
const slider = document.getElementById("snapshot");
if (slider) {
  const epochs = JSON.parse(slider.dataset.epochs);
  slider.addEventListener("input", () => {
    const final = Number(slider.value) === epochs.length;
    document.getElementById("snapshot-epoch").value = final ? "" : String(epochs[Number(slider.value)]);
    document.getElementById("snapshot-label").textContent = final ? "final model" : `epoch ${epochs[Number(slider.value)]}`;
  });
  slider.addEventListener("change", () => {
    for (const id of ["top-images", "cka-test"]) document.getElementById(id).textContent = "";
  });
}

const box = document.getElementById("predict");
const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const [, height, width] = box.dataset.shape.split(",").map(Number);
const clear = () => { ink.fillStyle = "#000"; ink.fillRect(0, 0, pad.width, pad.height); };
clear();

let last = null;
const at = (event) => {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * (pad.width / r.width), (event.clientY - r.top) * (pad.height / r.height)];
};
pad.addEventListener("pointerdown", (event) => { pad.setPointerCapture(event.pointerId); last = at(event); });
pad.addEventListener("pointermove", (event) => {
  if (!last) return;
  const next = at(event);
  Object.assign(ink, { strokeStyle: "#fff", lineWidth: pad.width / 12, lineCap: "round", lineJoin: "round" });
  ink.beginPath(); ink.moveTo(...last); ink.lineTo(...next); ink.stroke();
  last = next;
});
for (const name of ["pointerup", "pointercancel"]) pad.addEventListener(name, () => { last = null; });

async function predict() {
  const small = document.createElement("canvas");
  Object.assign(small, { width, height });
  const context = small.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(pad, 0, 0, width, height);
  const blob = await new Promise((done) => small.toBlob(done, "image/png"));
  const form = new FormData();
  form.append("file", blob, "drawing.png");
  const csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"];
  const response = await fetch(box.dataset.url, { method: "POST", body: form, headers: { "X-CSRF-Token": csrf } });
  document.getElementById("prediction").innerHTML = await response.text();
}

document.getElementById("predict-button").addEventListener("click", predict);
document.getElementById("clear-button").addEventListener("click", () => {
  clear(); document.getElementById("prediction").textContent = "";
});
document.getElementById("upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const image = await createImageBitmap(file);
  clear();
  const scale = Math.min(pad.width / image.width, pad.height / image.height);
  const [w, h] = [image.width * scale, image.height * scale];
  ink.drawImage(image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  predict();
});
