// Download links that work with a token: the file is fetched with the Authorization
// header and handed to the browser as an object URL.

import { apiUrl, getBlob } from "./api.js";
import { h, notify } from "./dom.js";

/**
 * A link to an API file; clicking fetches it (with the token) and saves it as `filename`.
 *
 * @param {string} path - the file's API path.
 * @param {string} filename - the name to save it under.
 * @param {string} text - the link text.
 * @param {string} [testid]
 */
export function downloadLink(path, filename, text, testid) {
  return h(
    "a",
    {
      href: apiUrl(path),
      download: filename,
      "data-testid": testid,
      onclick: async (event) => {
        event.preventDefault();
        try {
          save(await getBlob(path), filename);
        } catch (error) {
          notify(error.message, "error");
        }
      },
    },
    text,
  );
}

function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  // The click has started the download; the URL can go once it has been read.
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
