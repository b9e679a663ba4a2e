// A running job's progress: bar, phase, epoch and step, ETA, the latest batch metrics.

import { h, replace } from "../dom.js";
import { decimal, duration, jobFraction, phaseName } from "../format.js";

/** The progress panel of the job page; `update` it with each progress or state. */
export class ProgressPanel {
  constructor(config) {
    this.config = config || {};
    this.bar = h("progress", {
      max: 100,
      value: 0,
      "data-testid": "job-progress",
      "aria-label": "Job progress",
    });
    this.percent = h("span", { class: "percent", "data-testid": "job-percent" }, "0 %");
    this.text = h("p", { class: "muted", "data-testid": "job-phase" });
    this.metrics = h("p", { class: "metrics", "data-testid": "job-batch-metrics" });
    this.element = h(
      "section",
      { class: "card progress-card" },
      h("h2", null, "Progress"),
      h("div", { class: "bar-line" }, this.bar, this.percent),
      this.text,
      this.metrics,
    );
  }

  /** Show where the job is now. */
  update(status, progress) {
    const fraction = jobFraction(status, progress, this.config);
    this.bar.value = Math.round(fraction * 100);
    this.percent.textContent = `${Math.round(fraction * 100)} %`;
    if (status === "queued") {
      replace(this.text, "Waiting for a worker.");
    } else if (progress && status === "running") {
      replace(this.text, describe(progress));
    } else {
      replace(this.text, status === "succeeded" ? "Done." : `The job is ${status}.`);
    }
    const metrics = Object.entries((progress && progress.metrics) || {});
    replace(
      this.metrics,
      metrics.map(([name, value]) => h("span", null, `${name} ${decimal(value)}`)),
    );
  }
}

function describe(progress) {
  const parts = [phaseName(progress.phase)];
  if (progress.epochs) parts.push(`epoch ${progress.epoch ?? "?"} of ${progress.epochs}`);
  if (progress.steps) parts.push(`step ${progress.step ?? "?"} of ${progress.steps}`);
  if (typeof progress.eta_seconds === "number")
    parts.push(`about ${duration(progress.eta_seconds)} left in this phase`);
  return parts.join(" · ");
}
