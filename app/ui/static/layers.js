// The new-job form's layer editor: add, move up and remove rows (the form works without it, minus editing rows).
const body = document.querySelector("#layers tbody");
const renumber = () => [...body.rows].forEach((row, i) => {
  row.querySelector(".index").textContent = i;
  row.querySelector("select").setAttribute("aria-label", `type of layer ${i}`);
  row.querySelector("input").setAttribute("aria-label", `arguments of layer ${i}`);
});

document.getElementById("add-layer").addEventListener("click", () => {
  body.append(document.getElementById("layer-row").content.cloneNode(true));
  renumber();
  body.rows[body.rows.length - 1].querySelector("select").focus();
});
body.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const row = button.closest("tr");
  if (button.dataset.action === "remove") row.remove();
  else if (row.previousElementSibling) row.parentNode.insertBefore(row, row.previousElementSibling);
  renumber();
});
