// Building DOM nodes without innerHTML: class names, labels and messages come from users
// and the API, so they only ever become text nodes.

/**
 * Create an element.
 *
 * @param {string} tag - the tag name.
 * @param {object|null} [attrs] - attributes (`true` sets an empty one; `false`, null and
 *   undefined leave it out); `on<event>` keys with a function add a listener.
 * @param {...(Node|string|number|null|Array)} children - nodes or text; null is skipped.
 * @returns {HTMLElement}
 */
export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else {
      element.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Append nodes or text (nested arrays allowed; null and undefined skipped). */
export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace all of `parent`'s children. */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/** An alert box with an error's message (the API's own words when it sent some). */
export function errorBox(error, testid = "error") {
  const message = error instanceof Error ? error.message : String(error);
  return h("div", { class: "error", role: "alert", "data-testid": testid }, message);
}

/** A short-lived message at the top of the page. */
export function notify(message, kind = "info") {
  const region = document.querySelector("[data-testid=notices]");
  const note = h("div", { class: `notice ${kind}`, "data-testid": "notice" }, message);
  region.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 10000 : 4000);
}

/** A labelled form field: the label, the control, and an optional hint under it. */
export function field(labelText, control, hint) {
  const hintNode = hint ? h("small", { class: "hint" }, hint) : null;
  return h(
    "div",
    { class: "field" },
    h("label", { for: control.id }, labelText),
    control,
    hintNode,
  );
}

/** A badge, coloured by `kind` (a job status, a label, a decision; default: the text). */
export function badge(text, testid, kind = text) {
  const name = String(kind)
    .toLowerCase()
    .replace(/[^a-z0-9_-]/g, "");
  return h("span", { class: `badge badge-${name}`, "data-testid": testid }, text);
}

/** A button that asks "sure?" on the first click and acts on the second (within 5 s). */
export function confirmButton(text, confirmText, action, attrs = {}) {
  let armed = null;
  const button = h("button", { type: "button", ...attrs }, text);
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = confirmText;
      button.classList.add("armed");
      armed = setTimeout(() => disarm(), 5000);
      return;
    }
    disarm();
    await action(button);
  });
  function disarm() {
    clearTimeout(armed);
    armed = null;
    button.textContent = text;
    button.classList.remove("armed");
  }
  return button;
}
