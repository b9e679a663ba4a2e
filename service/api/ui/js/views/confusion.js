// The confusion matrix as a heatmap table: rows are true classes, columns predictions.

import { h } from "../dom.js";
import { percent } from "../format.js";

/**
 * A table cell per (true, predicted) pair with its count and its share of the true row,
 * coloured by that share: green on the diagonal (right), red off it (mistakes).
 *
 * @param {string[]} classes - class names, in the matrix's order.
 * @param {number[][]} matrix - matrix[i][j]: images of class i predicted as class j.
 */
export function confusionTable(classes, matrix) {
  const head = h(
    "tr",
    null,
    h("th", { scope: "col", class: "corner" }, "true ↓ / predicted →"),
    classes.map((name) => h("th", { scope: "col", "data-testid": "cm-col" }, name)),
  );
  const rows = matrix.map((counts, i) => {
    const total = counts.reduce((sum, n) => sum + n, 0);
    return h(
      "tr",
      null,
      h("th", { scope: "row", "data-testid": "cm-row" }, classes[i] ?? `#${i}`),
      counts.map((count, j) => cell(count, total, i === j)),
    );
  });
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      { class: "confusion", "data-testid": "confusion-matrix" },
      h(
        "caption",
        null,
        "Validation images: rows are the true class, columns the predicted class.",
      ),
      h("thead", null, head),
      h("tbody", null, rows),
    ),
  );
}

function cell(count, rowTotal, diagonal) {
  const rate = rowTotal ? count / rowTotal : 0;
  const hue = diagonal ? 142 : 0;
  // Any count gets some colour, so that a single mistake in a large class still shows.
  const alpha = count ? 0.12 + 0.78 * rate : 0;
  const td = h(
    "td",
    {
      "data-testid": "cm-cell",
      "data-count": count,
      class: diagonal ? "diagonal" : null,
      title: `${count} of ${rowTotal} (${percent(rate)})`,
    },
    h("span", { class: "count" }, String(count)),
    h("span", { class: "rate" }, percent(rate, 0)),
  );
  // Through the style object rather than a style attribute, which a strict CSP refuses.
  td.style.background = `hsla(${hue}, 70%, 45%, ${alpha.toFixed(3)})`;
  if (rate > 0.55) td.style.color = "#fff";
  return td;
}
