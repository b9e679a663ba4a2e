// A finished job's evaluation: summary figures, per-class table, promotion decision.

import { badge, h } from "../dom.js";
import { decimal, percent } from "../format.js";

/** The headline numbers of an evaluation on the validation split. */
export function evaluationSummary(evaluation) {
  const items = [
    ["Accuracy", percent(evaluation.accuracy)],
    [`Top-${evaluation.top_k ?? "k"} accuracy`, percent(evaluation.top_k_accuracy)],
    ["Macro F1", decimal(evaluation.macro_f1)],
    ["Log loss", decimal(evaluation.loss)],
    ["Validation images", evaluation.count ?? "–"],
  ];
  return h(
    "dl",
    { class: "figures", "data-testid": "evaluation-summary" },
    items.map(([name, value]) => h("div", null, h("dt", null, name), h("dd", null, String(value)))),
  );
}

/** Precision, recall, F1 and support of each class. */
export function perClassTable(classes, perClass) {
  const rows = classes.map((name) => {
    const stats = perClass[name] || {};
    const cells = [decimal(stats.precision), decimal(stats.recall), decimal(stats.f1)];
    return [name, [...cells, String(stats.support ?? "–")]];
  });
  const head = ["Class", "Precision", "Recall", "F1", "Support"];
  return numbersTable(head, rows, { "data-testid": "per-class" }, "per-class-row");
}

/** The champion/challenger decision: promoted or held, why, and both sides' numbers. */
export function promotionView(promotion) {
  const sides = [
    ["this version", promotion.candidate],
    ["stable before", promotion.stable],
  ].filter(([, side]) => side);
  const rows = sides.map(([name, side]) => [
    name,
    [
      String(side.version ?? "–"),
      percent(side.accuracy),
      decimal(side.macro_f1),
      decimal(side.log_loss),
    ],
  ]);
  const head = ["", "Version", "Accuracy", "Macro F1", "Log loss"];
  const decision = badge(promotion.decision || "unknown", "promotion-decision");
  return h(
    "div",
    { class: "promotion", "data-testid": "promotion" },
    h("p", null, decision, " ", promotion.reason || ""),
    rows.length ? numbersTable(head, rows, { class: "compact" }) : null,
  );
}

/**
 * A table of figures in a box that scrolls sideways on a narrow screen.
 *
 * @param {string[]} head - column headings.
 * @param {Array<[string, string[]]>} rows - each row's heading and its cells' text.
 * @param {object} [attrs] - attributes of the table (`class` is added to "numbers").
 * @param {string} [rowTestid] - a data-testid for every body row.
 */
function numbersTable(head, rows, attrs = {}, rowTestid = null) {
  const body = rows.map(([name, cells]) =>
    h(
      "tr",
      { "data-testid": rowTestid },
      h("th", { scope: "row" }, name),
      cells.map((text) => h("td", null, text)),
    ),
  );
  const table = h(
    "table",
    { ...attrs, class: `numbers ${attrs.class || ""}`.trim() },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        head.map((text) => h("th", { scope: "col" }, text)),
      ),
    ),
    h("tbody", null, body),
  );
  return h("div", { class: "table-scroll" }, table);
}
