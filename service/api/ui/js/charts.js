// Chart.js (vendored, loaded as a classic script) with the page's defaults.

import { h } from "./dom.js";

const Chart = globalThis.Chart;

export const COLORS = {
  train: "#2563eb",
  validation: "#ea580c",
  bar: "#0d9488",
  band: "rgba(124, 58, 237, 0.08)",
  bandEdge: "rgba(124, 58, 237, 0.6)",
  text: "#475569",
};

if (Chart) {
  // Live charts redraw many times a second; animating each change only blurs them.
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = COLORS.text;
}

/** Whether the chart library loaded; pages show tables only when it did not. */
export function chartsAvailable() {
  return Boolean(Chart);
}

/**
 * A chart in a sized box (Chart.js needs a positioned parent to be responsive).
 *
 * @param {object} config - a Chart.js configuration.
 * @param {object} [attrs] - attributes for the canvas (e.g. data-testid, aria-label).
 * @returns {{element: HTMLElement, chart: object|null, canvas: HTMLCanvasElement}}
 */
export function chartBox(config, attrs = {}) {
  const canvas = h("canvas", { role: "img", ...attrs });
  const element = h("div", { class: "chart-box" }, canvas);
  const chart = Chart ? new Chart(canvas, config) : null;
  return { element, chart, canvas };
}

/**
 * Shades the epochs of each training phase after the first and names every phase just
 * above the plot: the second phase (fine-tuning) starts where the shading does.
 * Options: `plugins.phaseBands.phases`, one phase name per x value.
 */
export const phaseBands = {
  id: "phaseBands",
  beforeDatasetsDraw(chart, _args, options) {
    const runs = phaseRuns(options.phases || []);
    if (!runs.length) return;
    const { ctx, chartArea: area, scales } = chart;
    const half = halfStep(scales.x, options.phases.length, area);
    ctx.save();
    ctx.font = `12px ${Chart.defaults.font.family}`;
    ctx.textBaseline = "top";
    runs.forEach((run, i) => {
      const left = Math.max(area.left, scales.x.getPixelForValue(run.start) - half);
      const right = Math.min(area.right, scales.x.getPixelForValue(run.end) + half);
      if (i > 0) {
        ctx.fillStyle = COLORS.band;
        ctx.fillRect(left, area.top, right - left, area.bottom - area.top);
        ctx.strokeStyle = COLORS.bandEdge;
        ctx.setLineDash([4, 4]);
        ctx.beginPath();
        ctx.moveTo(left, area.top);
        ctx.lineTo(left, area.bottom);
        ctx.stroke();
      }
      // Above the plot, in the room the chart leaves under its title, clear of the lines.
      ctx.fillStyle = COLORS.text;
      ctx.fillText(run.label, left + 4, area.top - 16, Math.max(0, right - left - 8));
    });
    ctx.restore();
  },
};

function phaseRuns(phases) {
  const labels = { head: "phase 1: head", fine_tune: "phase 2: fine-tune" };
  const runs = [];
  phases.forEach((phase, index) => {
    const last = runs[runs.length - 1];
    if (last && last.phase === phase) last.end = index;
    else runs.push({ phase, start: index, end: index, label: labels[phase] || phase });
  });
  return runs;
}

function halfStep(scale, count, area) {
  if (count < 2) return (area.right - area.left) / 2;
  return (scale.getPixelForValue(1) - scale.getPixelForValue(0)) / 2;
}
