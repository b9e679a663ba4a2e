// The models in the repository, with their versions and labels.

import { getJson } from "../api.js";
import { badge, h, replace } from "../dom.js";

/** Render `#/models`. */
export async function modelsPage(context) {
  const { models } = await getJson("/models", context.signal);
  const rows = models.map((model) =>
    h(
      "tr",
      { "data-testid": "model-row", "data-model": model.name },
      h(
        "th",
        { scope: "row" },
        h("a", { href: `#/models/${encodeURIComponent(model.name)}` }, model.name),
      ),
      h("td", null, model.versions.join(", ")),
      h(
        "td",
        null,
        Object.entries(model.labels).map(([label, version]) => [
          badge(`${label} → ${version}`, null, label),
          " ",
        ]),
      ),
    ),
  );
  const head = ["Model", "Versions", "Labels"].map((t) => h("th", { scope: "col" }, t));
  replace(
    context.view,
    h("div", { class: "page-head" }, h("h1", null, "Models")),
    models.length
      ? h(
          "div",
          { class: "table-scroll" },
          h(
            "table",
            { "data-testid": "models-table" },
            h("thead", null, h("tr", null, head)),
            h("tbody", null, rows),
          ),
        )
      : h(
          "p",
          { class: "muted" },
          "No model has been published yet. ",
          h("a", { href: "#/new" }, "Fine-tune one."),
        ),
  );
}
