// A job's event stream, read as three kinds of news: state, progress and finished epochs.

import { TERMINAL } from "./format.js";
import { follow } from "./sse.js";

/**
 * Follow `/finetune/{id}/events` until the job reaches a final state or `signal` aborts.
 *
 * Streams that carry the whole job in every event (older servers) are read too: their
 * history and progress are passed on as if they had come as `epoch` and `progress` events.
 *
 * @param {string} jobId
 * @param {{state?: Function, progress?: Function, epoch?: Function}} on - handlers.
 * @param {{signal: AbortSignal, onError?: Function}} options
 */
export function followJob(jobId, on, options) {
  const path = `/finetune/${encodeURIComponent(jobId)}/events`;
  return follow(path, (type, data) => route(type, data, on), options);
}

function route(type, data, on) {
  if (type === "epoch") {
    on.epoch?.(data);
    return false;
  }
  const wholeJob = data && typeof data === "object" && Array.isArray(data.history);
  if (wholeJob) {
    for (const row of data.history) on.epoch?.(row);
    if (data.progress) on.progress?.(data.progress);
  }
  if (type === "progress" && !wholeJob) on.progress?.(data);
  if (type === "state") {
    on.state?.(data);
    return TERMINAL.has(data.status);
  }
  return false;
}
