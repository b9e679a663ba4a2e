// Loss and accuracy per epoch, training and validation, with the two phases marked.

import { COLORS, chartBox, chartsAvailable, phaseBands } from "../charts.js";
import { h } from "../dom.js";

const PHASE_RANK = { head: 0, fine_tune: 1 };
const SHORT = { head: "head", fine_tune: "fine-tune" };

/** The curves of one job; feed it history rows with `add`, in any order, repeats allowed. */
export class Curves {
  constructor() {
    this.rows = new Map();
    this.loss = lineChart("Loss", "loss", "loss-chart", false);
    this.accuracy = lineChart("Accuracy", "accuracy", "accuracy-chart", true);
    this.empty = h(
      "p",
      { class: "muted", "data-testid": "curves-empty" },
      "No finished epoch yet.",
    );
    const note = chartsAvailable()
      ? null
      : h(
          "p",
          { class: "error" },
          "The chart library did not load; the table below has the numbers.",
        );
    this.element = h(
      "section",
      { class: "card", "data-testid": "job-curves" },
      h("h2", null, "Training curves"),
      note,
      this.empty,
      h("div", { class: "chart-grid" }, this.loss.element, this.accuracy.element),
    );
    this.redrawSoon = null;
  }

  /** Record a finished epoch; a row with a known (phase, epoch) replaces the earlier one. */
  add(row) {
    if (!row || row.epoch === undefined) return;
    this.rows.set(`${row.phase}:${row.epoch}`, row);
    // Many rows arrive at once on connect: draw once for all of them.
    if (!this.redrawSoon) this.redrawSoon = setTimeout(() => this.draw(), 50);
  }

  /** The rows in training order: phase 1 then phase 2, epochs ascending. */
  ordered() {
    const rank = (row) => PHASE_RANK[row.phase] ?? 9;
    return [...this.rows.values()].sort((a, b) => rank(a) - rank(b) || a.epoch - b.epoch);
  }

  draw() {
    this.redrawSoon = null;
    const rows = this.ordered();
    this.empty.hidden = rows.length > 0;
    for (const box of [this.loss, this.accuracy]) {
      box.canvas.dataset.points = String(rows.length);
      if (!box.chart) continue;
      box.chart.data.labels = rows.map((row) => `${SHORT[row.phase] || row.phase} ${row.epoch}`);
      box.chart.data.datasets[0].data = rows.map((row) => row[box.metric] ?? null);
      box.chart.data.datasets[1].data = rows.map((row) => row[`val_${box.metric}`] ?? null);
      box.chart.options.plugins.phaseBands.phases = rows.map((row) => row.phase);
      box.chart.update();
    }
  }

  destroy() {
    clearTimeout(this.redrawSoon);
    this.loss.chart?.destroy();
    this.accuracy.chart?.destroy();
  }
}

function lineChart(title, metric, testid, isFraction) {
  const dataset = (label, color, dashed) => ({
    label,
    data: [],
    borderColor: color,
    backgroundColor: color,
    borderDash: dashed ? [6, 4] : [],
    pointRadius: 3,
    tension: 0.2,
    spanGaps: true,
  });
  const config = {
    type: "line",
    data: {
      labels: [],
      datasets: [
        dataset(`training ${metric}`, COLORS.train, false),
        dataset(`validation ${metric}`, COLORS.validation, true),
      ],
    },
    options: {
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { title: { display: true, text: "epoch" } },
        y: isFraction ? { min: 0, max: 1 } : { beginAtZero: true },
      },
      plugins: {
        // Room under the title for the phase names (drawn by phaseBands).
        title: { display: true, text: title, padding: { top: 4, bottom: 22 } },
        legend: { position: "bottom", labels: { usePointStyle: true, pointStyle: "line" } },
        phaseBands: { phases: [] },
      },
    },
    plugins: [phaseBands],
  };
  const label = `${title} per epoch, training and validation`;
  const box = chartBox(config, { "data-testid": testid, "aria-label": label });
  return { ...box, metric };
}
