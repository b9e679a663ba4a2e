// Hash routes (#/jobs, #/jobs/<id>, ...): one page at a time, each told when it is left.

import { errorBox, h, replace } from "./dom.js";

/** What a page gets: where to draw, its route's parts, and a way to clean up on leaving. */
export class PageContext {
  constructor(view, params, query) {
    this.view = view;
    this.params = params;
    this.query = query;
    this.controller = new AbortController();
    this.cleanups = [];
  }

  /** Aborted when the page is left: pass it to fetches and streams. */
  get signal() {
    return this.controller.signal;
  }

  /** Whether the reader has moved on to another page. */
  get left() {
    return this.controller.signal.aborted;
  }

  /** Run `fn` when the page is left. */
  onLeave(fn) {
    this.cleanups.push(fn);
  }

  /** Run `fn` every `ms` milliseconds while the page is shown. */
  every(ms, fn) {
    const timer = setInterval(fn, ms);
    this.onLeave(() => clearInterval(timer));
  }

  leave() {
    this.controller.abort();
    for (const fn of this.cleanups.splice(0)) {
      try {
        fn();
      } catch (error) {
        console.error(error);
      }
    }
  }
}

/**
 * Start routing: draw the page the hash names now and on every change.
 *
 * @param {HTMLElement} view - where pages draw.
 * @param {Array<[RegExp, string, Function]>} routes - pattern, nav name, render(context).
 * @param {string} home - the hash to use when there is none.
 */
export function startRouter(view, routes, home) {
  let current = null;
  const show = async () => {
    const { path, query } = parseHash(location.hash);
    if (!path || path === "/") {
      location.replace(home);
      return;
    }
    current?.leave();
    const match = routes
      .map(([pattern, nav, render]) => [pattern.exec(path), nav, render])
      .find(([m]) => m);
    const params = match ? match[0].slice(1).map(decodeURIComponent) : [];
    const context = new PageContext(view, params, query);
    current = context;
    markNav(match ? match[1] : null);
    replace(view);
    if (!match) {
      replace(view, h("h1", null, "Page not found"), h("p", null, `Nothing lives at #${path}.`));
      return;
    }
    try {
      await match[2](context);
    } catch (error) {
      if (context.left || error.name === "AbortError") return;
      console.error(error);
      view.append(errorBox(error, "page-error"));
    }
  };
  window.addEventListener("hashchange", show);
  show();
}

function parseHash(hash) {
  const text = hash.replace(/^#/, "");
  const [path, search = ""] = text.split("?", 2);
  return { path, query: new URLSearchParams(search) };
}

function markNav(name) {
  for (const link of document.querySelectorAll("nav [data-route]")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}
