// Start a fine-tuning job: upload an archive, pick a backbone, set the common fields.

import { getJson, postForm } from "../api.js";
import { errorBox, field, h, replace } from "../dom.js";

// The fields offered as inputs; everything else goes through the advanced JSON box.
const NUMBER_FIELDS = [
  ["epochs", "Epochs (phase 1: head)", "1"],
  ["batch_size", "Batch size", "1"],
  ["learning_rate", "Learning rate", "any"],
  ["fine_tune_epochs", "Fine-tune epochs (phase 2)", "1"],
  ["fine_tune_learning_rate", "Fine-tune learning rate", "any"],
];

/** Render `#/new`. */
export async function newJobPage(context) {
  const [backbones, schema] = await Promise.all([
    getJson("/backbones", context.signal).catch((error) => error),
    trainConfigSchema(context.signal),
  ]);
  const form = new FinetuneForm(backbones, schema);
  replace(
    context.view,
    h("div", { class: "page-head" }, h("h1", null, "New fine-tune")),
    form.element,
  );
}

/** TrainConfig's JSON schema from the API's OpenAPI document (for defaults and limits). */
async function trainConfigSchema(signal) {
  try {
    const document = await getJson("/openapi.json", signal);
    return document.components?.schemas?.TrainConfig?.properties || {};
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return {}; // the form still works; it only lacks placeholders
  }
}

class FinetuneForm {
  constructor(backbones, schema) {
    this.schema = schema;
    this.backbones = backbones instanceof Error ? [] : backbones.items;
    this.dataset = h("input", {
      id: "ft-dataset",
      name: "dataset",
      type: "file",
      required: true,
      accept:
        ".zip,.tar,.tgz,.tar.gz,.tar.bz2,.tar.xz,application/zip,application/x-tar,application/gzip",
    });
    this.name = h("input", {
      id: "ft-model-name",
      name: "model_name",
      required: true,
      autocomplete: "off",
    });
    this.base = this.backboneControl(backbones);
    this.info = h("p", { class: "hint", "data-testid": "backbone-info" });
    this.weights = h("select", { id: "ft-weights", name: "weights" });
    this.imageSize = this.numberInput("image_size", "1");
    this.fineTuneAt = h("input", {
      id: "ft-fine_tune_at",
      name: "fine_tune_at",
      autocomplete: "off",
    });
    this.numbers = Object.fromEntries(
      NUMBER_FIELDS.map(([name, , step]) => [name, this.numberInput(name, step)]),
    );
    this.advanced = h("textarea", {
      id: "ft-advanced",
      name: "advanced",
      rows: 4,
      spellcheck: false,
      placeholder: '{"dropout": 0.3, "augmentation": {"flip": "horizontal"}}',
    });
    this.problem = h("div", { class: "problem" });
    this.submit = h(
      "button",
      { type: "submit", "data-testid": "finetune-submit" },
      "Start fine-tuning",
    );
    this.element = this.layout(backbones);
    this.backboneChanged();
  }

  layout(backbones) {
    const listError =
      backbones instanceof Error
        ? errorBox(`Could not list the backbones: ${backbones.message}`)
        : null;
    return h(
      "form",
      {
        class: "card form-grid",
        "data-testid": "finetune-form",
        onsubmit: (event) => this.send(event),
      },
      field(
        "Dataset archive",
        this.dataset,
        "A zip or tar of one folder per class, each holding that class's images.",
      ),
      field(
        "Model name",
        this.name,
        "Lower case letters, digits, _ and -; a new version if the model exists.",
      ),
      listError,
      h(
        "div",
        { class: "field" },
        h("label", { for: this.base.id }, "Backbone"),
        this.base,
        this.info,
      ),
      field("Weights", this.weights),
      field("Image size (pixels)", this.imageSize, "Empty: the backbone's default."),
      NUMBER_FIELDS.map(([name, label]) => field(label, this.numbers[name])),
      field(
        "Fine-tune from layer",
        this.fineTuneAt,
        "A layer index or name to unfreeze from; empty: train the head only.",
      ),
      h(
        "details",
        { class: "field wide" },
        h("summary", null, "Advanced settings (JSON)"),
        field("Extra config fields, merged over the ones above", this.advanced),
      ),
      this.problem,
      h("div", { class: "buttons" }, this.submit),
    );
  }

  backboneControl(backbones) {
    if (backbones instanceof Error) {
      return h("input", {
        id: "ft-base-model",
        name: "base_model",
        placeholder: "empty: the server's default",
      });
    }
    return h(
      "select",
      {
        id: "ft-base-model",
        name: "base_model",
        "data-testid": "backbone-select",
        onchange: () => this.backboneChanged(),
      },
      backbones.items.map((b) =>
        h("option", { value: b.name, selected: b.name === backbones.default }, b.name),
      ),
    );
  }

  numberInput(name, step) {
    const spec = this.schema[name] || {};
    const bounds =
      (spec.anyOf || [spec]).find((s) => s.type === "integer" || s.type === "number") || {};
    return h("input", {
      id: `ft-${name}`,
      name,
      type: "number",
      step,
      min: bounds.minimum ?? bounds.exclusiveMinimum,
      max: bounds.maximum,
      placeholder: spec.default ?? null,
    });
  }

  backboneChanged() {
    const backbone = this.backbones.find((b) => b.name === this.base.value);
    if (!backbone) {
      replace(this.info);
      replace(
        this.weights,
        ["imagenet", "none"].map((w) => h("option", { value: w }, w)),
      );
      return;
    }
    const weights = backbone.imagenet_weights ? ["imagenet", "none"] : ["none"];
    replace(
      this.weights,
      weights.map((w) => h("option", { value: w }, w === "none" ? "none (random start)" : w)),
    );
    this.imageSize.placeholder = String(backbone.default_image_size);
    this.imageSize.min = String(backbone.min_image_size);
    replace(
      this.info,
      `Default image size ${backbone.default_image_size} px (at least ${backbone.min_image_size}); `,
      `preprocessing "${backbone.preprocessing}"; `,
      backbone.imagenet_weights ? "ImageNet weights available." : "no ImageNet weights.",
    );
  }

  /** The config JSON from the fields (only those filled in) and the advanced box. */
  config() {
    const config = { model_name: this.name.value.trim(), weights: this.weights.value };
    if (this.base.value) config.base_model = this.base.value;
    if (this.imageSize.value) config.image_size = Number(this.imageSize.value);
    for (const [name, input] of Object.entries(this.numbers)) {
      if (input.value) config[name] = Number(input.value);
    }
    const at = this.fineTuneAt.value.trim();
    if (at) config.fine_tune_at = /^-?\d+$/.test(at) ? Number(at) : at;
    const extra = this.advanced.value.trim();
    if (!extra) return config;
    let parsed;
    try {
      parsed = JSON.parse(extra);
    } catch (error) {
      throw new Error(`Advanced settings are not valid JSON: ${error.message}`);
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error('Advanced settings must be a JSON object, like {"dropout": 0.3}.');
    }
    return { ...config, ...parsed };
  }

  async send(event) {
    event.preventDefault();
    replace(this.problem);
    let config;
    try {
      config = this.config();
    } catch (error) {
      replace(this.problem, errorBox(error, "finetune-error"));
      return;
    }
    const body = new FormData();
    body.append("dataset", this.dataset.files[0]);
    body.append("config", JSON.stringify(config));
    this.submit.disabled = true;
    this.submit.textContent = "Uploading…";
    try {
      const accepted = await postForm("/finetune", body);
      location.hash = `#/jobs/${encodeURIComponent(accepted.job_id)}`;
    } catch (error) {
      replace(this.problem, errorBox(error, "finetune-error"));
    } finally {
      this.submit.disabled = false;
      this.submit.textContent = "Start fine-tuning";
    }
  }
}
