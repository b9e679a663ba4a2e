// The API token: kept in sessionStorage (this tab only), asked for with the page's own form
// when the API answers 401. Concurrent 401s share one question.

const KEY = "ftserve.token";

let pending = null;

/** The token this tab holds, or null. */
export function getToken() {
  return sessionStorage.getItem(KEY);
}

/** Drop the token, so that the next call that needs one asks again. */
export function forgetToken() {
  sessionStorage.removeItem(KEY);
  showForgetLink();
}

/**
 * Ask for a token with the token form.
 *
 * @param {string} reason - why it is needed (the API's 401 message).
 * @returns {Promise<string|null>} the token, or null when the user cancels.
 */
export function askToken(reason) {
  if (!pending) {
    pending = showForm(reason).finally(() => {
      pending = null;
    });
  }
  return pending;
}

/** Wire the "forget token" link; call once at start-up. */
export function setUpTokenControls() {
  const link = document.querySelector("[data-testid=forget-token]");
  link.addEventListener("click", (event) => {
    event.preventDefault();
    forgetToken();
  });
  showForgetLink();
}

function showForgetLink() {
  document.querySelector("[data-testid=forget-token]").hidden = !getToken();
}

function showForm(reason) {
  const panel = document.querySelector("[data-testid=token-panel]");
  const form = panel.querySelector("form");
  const input = form.querySelector("input");
  const cancel = form.querySelector("[data-action=cancel]");
  panel.querySelector("[data-testid=token-reason]").textContent = reason;
  input.value = "";
  panel.hidden = false;
  input.focus();
  return new Promise((resolve) => {
    const finish = (token) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      panel.hidden = true;
      resolve(token);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(KEY, token);
      showForgetLink();
      finish(token);
    };
    const onCancel = () => finish(null);
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
  });
}
