// Classify images with a served model: pick model, version or label, top-k; drop images.

import { getJson, postForm } from "../api.js";
import { COLORS, chartBox } from "../charts.js";
import { errorBox, field, h, replace } from "../dom.js";
import { percent } from "../format.js";

/** Render `#/predict` (query: model, version, label). */
export async function predictPage(context) {
  const { models } = await getJson("/models", context.signal);
  if (!models.length) {
    replace(
      context.view,
      h("h1", null, "Predict"),
      h("p", { class: "muted" }, "No model is published yet."),
    );
    return;
  }
  const form = new PredictForm(models, context);
  replace(
    context.view,
    h("div", { class: "page-head" }, h("h1", null, "Predict")),
    form.element,
    form.result,
  );
}

class PredictForm {
  constructor(models, context) {
    this.models = models;
    this.context = context;
    this.disposables = []; // charts and preview URLs of the answer on show
    context.onLeave(() => this.clear());
    const asked = context.query.get("model");
    this.model = h(
      "select",
      { id: "predict-model", name: "model", onchange: () => this.fillTargets() },
      models.map((m) => h("option", { value: m.name, selected: m.name === asked }, m.name)),
    );
    this.target = h("select", { id: "predict-target", name: "target" });
    this.topK = h("input", {
      id: "predict-top-k",
      name: "top_k",
      type: "number",
      min: 1,
      max: 1000,
      value: 5,
    });
    this.files = h("input", {
      id: "predict-files",
      name: "files",
      type: "file",
      accept: "image/*",
      multiple: true,
      required: true,
    });
    this.result = h("section", {
      class: "predict-results",
      "data-testid": "predict-result",
      "aria-live": "polite",
    });
    this.submit = h("button", { type: "submit" }, "Classify");
    this.element = h(
      "form",
      {
        class: "card form-grid",
        "data-testid": "predict-form",
        onsubmit: (event) => this.send(event),
      },
      field("Model", this.model),
      field("Version or label", this.target),
      field("Top k", this.topK, "How many labels to rank (at most the model's own k)."),
      this.dropZone(),
      h("div", { class: "buttons" }, this.submit),
    );
    this.fillTargets(context.query.get("version"), context.query.get("label"));
  }

  /** The version and label choices of the chosen model. */
  fillTargets(version, label) {
    const model = this.models.find((m) => m.name === this.model.value) || this.models[0];
    // stable first: it is what a request without a version or label gets.
    const entries = Object.entries(model.labels).sort(
      ([a], [b]) => (b === "stable") - (a === "stable"),
    );
    const labels = entries.map(([name, v]) =>
      h(
        "option",
        { value: `label:${name}`, selected: name === label },
        `label ${name} (version ${v})`,
      ),
    );
    const versions = [...model.versions]
      .reverse()
      .map((v) =>
        h("option", { value: `version:${v}`, selected: String(v) === version }, `version ${v}`),
      );
    const fallback = model.labels.stable ? [] : [h("option", { value: "" }, "default")];
    replace(this.target, fallback, labels, versions);
  }

  dropZone() {
    const zone = h(
      "div",
      { class: "drop-zone", "data-testid": "drop-zone" },
      h("label", { for: this.files.id }, "Images: drop them here or choose files"),
      this.files,
    );
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer.files.length) this.files.files = event.dataTransfer.files;
    });
    return zone;
  }

  async send(event) {
    event.preventDefault();
    const files = [...this.files.files];
    if (!files.length) return;
    const body = new FormData();
    for (const file of files) body.append("files", file, file.name);
    body.append("model", this.model.value);
    const [kind, value] = this.target.value.split(":");
    if (kind === "version" || kind === "label") body.append(kind, value);
    body.append("top_k", this.topK.value || "5");
    this.submit.disabled = true;
    this.clear();
    replace(this.result, h("p", { class: "muted" }, "Classifying…"));
    try {
      const answer = await postForm("/predict", body);
      if (!this.context.left) this.show(answer, files);
    } catch (error) {
      if (!this.context.left) replace(this.result, errorBox(error, "predict-error"));
    } finally {
      this.submit.disabled = false;
    }
  }

  show(answer, files) {
    const cards = answer.predictions.map((prediction, i) => this.card(prediction, files[i]));
    replace(
      this.result,
      h("p", { class: "muted" }, `Model ${answer.model}, version ${answer.version}.`),
      cards,
    );
  }

  card(prediction, file) {
    const preview = URL.createObjectURL(file);
    this.disposables.push({ destroy: () => URL.revokeObjectURL(preview) });
    const ranked = prediction.top_k;
    const bars = chartBox(barConfig(ranked), {
      "data-testid": "predict-chart",
      "aria-label": `Top ${ranked.length} labels for ${file.name}`,
    });
    bars.element.style.height = `${60 + 28 * ranked.length}px`;
    if (bars.chart) this.disposables.push(bars.chart);
    const list = h(
      "ol",
      { class: "top-k" },
      ranked.map((entry) =>
        h(
          "li",
          { "data-testid": "predict-row", "data-label": entry.label, "data-score": entry.score },
          `${entry.label}: ${percent(entry.score)}`,
        ),
      ),
    );
    return h(
      "article",
      { class: "card prediction" },
      h("img", { src: preview, alt: `Uploaded image ${file.name}`, class: "preview" }),
      h(
        "div",
        { class: "prediction-body" },
        h(
          "h3",
          null,
          file.name,
          " → ",
          h("strong", { "data-testid": "predict-label" }, prediction.label),
          ` (${percent(prediction.score)})`,
        ),
        bars.element,
        list,
      ),
    );
  }

  clear() {
    for (const item of this.disposables.splice(0)) item.destroy();
  }
}

function barConfig(ranked) {
  return {
    type: "bar",
    data: {
      labels: ranked.map((entry) => entry.label),
      datasets: [
        { label: "score", data: ranked.map((entry) => entry.score), backgroundColor: COLORS.bar },
      ],
    },
    options: {
      indexAxis: "y",
      scales: { x: { min: 0, max: 1 } },
      plugins: { legend: { display: false } },
    },
  };
}
