// Server-sent events over fetch rather than EventSource: EventSource cannot send the
// Authorization header, and the token must not travel in a URL.

import { request } from "./api.js";

const RECONNECT_MS = 2000;

/**
 * Follow an event stream until `signal` aborts or `onEvent` returns true ("done").
 *
 * A dropped connection is opened again after a pause; the server starts each stream with
 * the state so far, so nothing is lost.
 *
 * @param {string} path - the API path of the stream.
 * @param {(type: string, data: any, id: string|null) => boolean|void} onEvent
 * @param {{signal: AbortSignal, onError?: (error: Error) => void}} options
 */
export async function follow(path, onEvent, { signal, onError }) {
  while (!signal.aborted) {
    try {
      const response = await request(path, {
        headers: { Accept: "text/event-stream" },
        signal,
      });
      if (await readEvents(response.body, onEvent)) return;
    } catch (error) {
      if (signal.aborted) return;
      if (onError) onError(error);
      // A 4xx will not go away by asking again (unknown job, token refused).
      if (error.status >= 400 && error.status < 500) return;
    }
    await sleep(RECONNECT_MS, signal);
  }
}

/** Parse the stream; true once `onEvent` says the stream has said all it will. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length && dispatch(event, onEvent)) {
          await reader.cancel();
          return true;
        }
        event = { type: "message", data: [], id: null };
      } else {
        readField(event, line);
      }
    }
  }
}

function readField(event, line) {
  if (line.startsWith(":")) return; // a comment: keep-alive or a note
  const colon = line.indexOf(":");
  const name = colon < 0 ? line : line.slice(0, colon);
  let value = colon < 0 ? "" : line.slice(colon + 1);
  if (value.startsWith(" ")) value = value.slice(1);
  if (name === "event") event.type = value;
  else if (name === "data") event.data.push(value);
  else if (name === "id") event.id = value;
}

function dispatch(event, onEvent) {
  let data;
  try {
    data = JSON.parse(event.data.join("\n"));
  } catch {
    return false; // not ours to read
  }
  return onEvent(event.type, data, event.id) === true;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
