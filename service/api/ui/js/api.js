// Calls to the ftserve API: the token header, JSON errors turned into ApiError, and one
// retry after the user gives a token when the API answers 401.

import { askToken, getToken } from "./token.js";

// The page lives at <api>/ui/; the API is the folder above, which keeps working when a
// proxy serves everything under a path prefix.
const API_ROOT = new URL("../", document.baseURI);

/** An error the API answered with (or a network failure, status 0). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** The absolute URL of an API path such as "/finetune" or "models/x". */
export function apiUrl(path) {
  return new URL(path.replace(/^\/+/, ""), API_ROOT).href;
}

/**
 * Send a request; resolve with the Response when it is a success.
 *
 * @param {string} path - an API path.
 * @param {object} [options] - method, json (a body to send as JSON), body, headers, signal.
 * @returns {Promise<Response>}
 * @throws {ApiError} the API's JSON error (or a readable stand-in).
 */
export async function request(path, options = {}) {
  let response = await send(path, options);
  while (response.status === 401) {
    const reason = await errorOf(response);
    const token = await askToken(reason.message);
    if (token === null) throw reason;
    response = await send(path, options);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** GET a JSON document. */
export async function getJson(path, signal) {
  return (await request(path, { signal })).json();
}

/** Send `body` as JSON with `method`; the answer's JSON (or null when it has none). */
export async function sendJson(method, path, body) {
  const options = body === undefined ? { method } : { method, json: body };
  const response = await request(path, options);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** POST a FormData (multipart); the answer's JSON. */
export async function postForm(path, form) {
  return (await request(path, { method: "POST", body: form })).json();
}

/** GET a file as a Blob (images, downloads): the token travels in the header. */
export async function getBlob(path, signal) {
  return (await request(path, { signal })).blob();
}

async function send(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const sent = { ...headers };
  const token = getToken();
  if (token) sent.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    sent["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  try {
    return await fetch(apiUrl(path), { method, body, headers: sent, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", `Cannot reach the API (${error.message}).`);
  }
}

async function errorOf(response) {
  const fallback = `${response.status} ${response.statusText || "error"}`;
  try {
    const body = await response.json();
    const error = body && body.error;
    if (error && typeof error.message === "string") {
      return new ApiError(response.status, error.code || "error", error.message);
    }
  } catch {
    // Not JSON (a proxy's page, say): the status line is all there is to show.
  }
  return new ApiError(response.status, "http_error", `The API answered ${fallback}.`);
}
