// One model: its versions, their state, metrics and promotion decisions; label moves,
// rollback and deletes through the lifecycle API.

import { getJson, sendJson } from "../api.js";
import { badge, confirmButton, errorBox, h, notify, replace } from "../dom.js";
import { dateTime, decimal, percent } from "../format.js";
import { downloadLink } from "../download.js";
import { misclassifiedGallery } from "../views/gallery.js";

/** Render `#/models/<name>` (query: version, whose mistakes to show). */
export async function modelPage(context) {
  const [name] = context.params;
  const path = `/models/${encodeURIComponent(name)}`;
  const problem = h("div", { class: "problem", "data-testid": "model-problem" });
  const body = h("div");
  const gallery = h("div");
  const act = async (what, button, call) => {
    button.disabled = true;
    replace(problem);
    try {
      draw(await call());
      notify(what);
    } catch (error) {
      if (!context.left) replace(problem, errorBox(error, "model-error"));
    } finally {
      button.disabled = false;
    }
  };
  const draw = (detail) => {
    if (!detail || !detail.versions) {
      location.hash = "#/models"; // the whole model was deleted
      return;
    }
    const shown = pickVersion(detail, Number(context.query.get("version")));
    replace(body, ...modelView(detail, path, act, shown));
    const title = `Misclassified validation images of version ${shown}`;
    if (shown) replace(gallery, misclassifiedGallery(name, shown, context, title));
  };
  replace(
    context.view,
    h("div", { class: "page-head" }, h("h1", null, `Model ${name}`)),
    problem,
    body,
    gallery,
  );
  draw(await getJson(path, context.signal));
}

function pickVersion(detail, asked) {
  const versions = detail.versions.map((v) => v.version);
  if (versions.includes(asked)) return asked;
  return detail.labels.stable ?? versions[versions.length - 1];
}

function modelView(detail, path, act, shown) {
  const rollback = h(
    "button",
    {
      type: "button",
      "data-testid": "rollback",
      title: "Point stable back at the version it pointed at before",
    },
    "Roll back stable",
  );
  rollback.addEventListener("click", () =>
    act("stable was rolled back.", rollback, () => sendJson("POST", `${path}/rollback`)),
  );
  const labels = Object.entries(detail.labels).map(([label, version]) => [
    badge(`${label} → ${version}`, "model-label", label),
    " ",
  ]);
  const head = [
    "Version",
    "Labels",
    "State",
    "Created",
    "Accuracy",
    "Macro F1",
    "Loss",
    "Images",
    "Promotion",
    "Files",
    "",
  ];
  return [
    h("p", { class: "labels" }, labels.length ? labels : "No labels."),
    h(
      "div",
      { class: "actions" },
      rollback,
      h(
        "a",
        { class: "button secondary", href: `#/predict?model=${encodeURIComponent(detail.name)}` },
        "Predict",
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", null, "Versions"),
      h(
        "div",
        { class: "table-scroll" },
        h(
          "table",
          { class: "versions", "data-testid": "versions-table" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              head.map((t) => h("th", { scope: "col" }, t)),
            ),
          ),
          h(
            "tbody",
            null,
            [...detail.versions].reverse().map((v) => versionRow(detail.name, v, path, act, shown)),
          ),
        ),
      ),
    ),
  ];
}

function versionRow(model, version, path, act, shown) {
  const metrics = version.metrics || {};
  return h(
    "tr",
    {
      "data-testid": "version-row",
      "data-version": version.version,
      class: version.version === shown ? "selected" : null,
    },
    h(
      "th",
      { scope: "row" },
      h(
        "a",
        { href: `#/models/${encodeURIComponent(model)}?version=${version.version}` },
        String(version.version),
      ),
    ),
    h(
      "td",
      null,
      version.labels.map((label) => [badge(label, "version-label"), " "]),
    ),
    h(
      "td",
      null,
      badge(version.state, "version-state"),
      version.served ? null : h("small", { class: "muted" }, " not served"),
      version.error ? h("small", { class: "error-text" }, ` ${version.error}`) : null,
    ),
    h("td", null, dateTime(version.created_at)),
    h("td", null, percent(metrics.accuracy)),
    h("td", null, decimal(metrics.macro_f1)),
    h("td", null, decimal(metrics.loss)),
    h("td", null, String(metrics.count ?? "–")),
    h("td", { "data-testid": "version-promotion" }, promotionCell(version.promotion)),
    h("td", null, files(model, version)),
    h("td", { class: "row-actions" }, versionActions(version, path, act)),
  );
}

function promotionCell(promotion) {
  if (!promotion) return "–";
  return [
    badge(promotion.decision || "unknown", null),
    " ",
    h("small", null, promotion.reason || ""),
  ];
}

function files(model, version) {
  const links = [];
  if (version.onnx_url) {
    const filename = `${model}-${version.version}.onnx`;
    links.push(downloadLink(version.onnx_url, filename, "ONNX", "onnx-link"));
  }
  if (version.card_url) {
    const filename = `${model}-${version.version}-model_card.json`;
    if (links.length) links.push(" · ");
    links.push(downloadLink(version.card_url, filename, "Model card", "card-link"));
  }
  return links.length ? links : "–";
}

function versionActions(version, path, act) {
  const buttons = [];
  if (!version.labels.includes("stable")) {
    const promote = h(
      "button",
      { type: "button", class: "small", "data-testid": "promote" },
      "Promote",
    );
    promote.title = "Point the label stable at this version";
    promote.addEventListener("click", () =>
      act(`Version ${version.version} is now stable.`, promote, () =>
        sendJson("PUT", `${path}/labels/stable`, { version: version.version }),
      ),
    );
    buttons.push(promote);
  }
  const remove = confirmButton(
    "Delete",
    "Really delete?",
    (button) =>
      act(`Version ${version.version} was deleted.`, button, async () => {
        await sendJson("DELETE", `${path}/versions/${version.version}`);
        return getJson(path).catch((error) =>
          error.status === 404 ? null : Promise.reject(error),
        );
      }),
    { class: "danger small", "data-testid": "delete-version" },
  );
  buttons.push(" ", remove);
  return buttons;
}
