// Misclassified validation images of a model version, most confident mistakes first.

import { getBlob, getJson } from "../api.js";
import { errorBox, h, replace } from "../dom.js";
import { percent } from "../format.js";

/**
 * A gallery section that fills itself from the version's misclassified route.
 *
 * A version without thumbnails (older versions, no mistakes, or a server without the
 * route) shows a sentence instead. Thumbnails are fetched with the token and shown from
 * object URLs, which are released when the page is left.
 *
 * @param {string} model
 * @param {number} version
 * @param {import("../router.js").PageContext} context
 * @param {string} [title] - the section's heading.
 */
export function misclassifiedGallery(
  model,
  version,
  context,
  title = "Misclassified validation images",
) {
  const body = h("div", { class: "gallery-body" }, h("p", { class: "muted" }, "Loading…"));
  const element = h(
    "section",
    { class: "card", "data-testid": "misclassified" },
    h("h2", null, title),
    body,
  );
  const base = `/models/${encodeURIComponent(model)}/versions/${version}/misclassified`;
  load(base, body, context);
  return element;
}

async function load(base, body, context) {
  let index;
  try {
    index = await getJson(base, context.signal);
  } catch (error) {
    if (context.left) return;
    if (error.status === 404) replace(body, noThumbnails());
    else replace(body, errorBox(error));
    return;
  }
  const items = index.items || [];
  if (!items.length) {
    replace(body, noThumbnails(index.total_misclassified));
    return;
  }
  const total = index.total_misclassified ?? items.length;
  const limit = index.limit_per_class ? ` (at most ${index.limit_per_class} per true class)` : "";
  replace(
    body,
    h("p", { class: "muted" }, `${items.length} of ${total} misclassified images${limit}.`),
    h(
      "div",
      { class: "gallery" },
      items.map((item) => thumbnail(base, item, context)),
    ),
  );
}

function noThumbnails(total) {
  const text =
    total > 0
      ? `${total} images were misclassified, but this version kept no thumbnails.`
      : "No thumbnails: no misclassified images were kept for this version.";
  return h("p", { class: "muted", "data-testid": "misclassified-empty" }, text);
}

function thumbnail(base, item, context) {
  const alt = `Validation image of ${item.true_label}, predicted as ${item.predicted_label}`;
  const image = h("img", { alt, width: 96, height: 96, "data-testid": "misclassified-image" });
  const path = item.url || `${base}/${encodeURIComponent(item.file)}`;
  getBlob(path, context.signal)
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      context.onLeave(() => URL.revokeObjectURL(url));
      image.src = url;
    })
    .catch((error) => {
      if (!context.left) image.replaceWith(h("span", { class: "broken" }, error.message));
    });
  return h(
    "figure",
    { class: "thumb", "data-testid": "misclassified-item" },
    image,
    h(
      "figcaption",
      null,
      h("span", null, "true: ", h("strong", null, item.true_label)),
      h("span", null, "predicted: ", h("strong", null, item.predicted_label)),
      h("span", null, `score ${percent(item.score)}`),
    ),
  );
}
