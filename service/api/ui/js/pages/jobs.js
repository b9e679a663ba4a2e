// The jobs table: polled every two seconds, with a live event stream per running job.

import { getJson, sendJson } from "../api.js";
import { badge, errorBox, h, notify, replace } from "../dom.js";
import { dateTime, duration, jobFraction, jobSeconds, shortId } from "../format.js";
import { followJob } from "../jobstream.js";

const POLL_MS = 2000;
const PAGE_SIZE = 20;
// Browsers open at most six HTTP/1.1 connections per host; each stream holds one.
const MAX_STREAMS = 3;
const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];

/** Render `#/jobs` (query: status, offset). */
export async function jobsPage(context) {
  const status = context.query.get("status") || "";
  const offset = Math.max(0, Number(context.query.get("offset")) || 0);
  const table = new JobsTable(context);
  const problem = h("div", { class: "problem" });
  const pager = h("div", { class: "pager", "data-testid": "jobs-pager" });
  replace(
    context.view,
    h(
      "div",
      { class: "page-head" },
      h("h1", null, "Fine-tuning jobs"),
      h("a", { class: "button", href: "#/new" }, "New fine-tune"),
    ),
    statusFilter(status),
    problem,
    table.element,
    pager,
  );
  let polling = true;
  let inFlight = false;
  const poll = async () => {
    // A slow answer must not be overtaken by the next poll's.
    if (!polling || inFlight) return;
    inFlight = true;
    try {
      const page = await getJson(listPath(status, offset), context.signal);
      replace(problem);
      table.show(page.items);
      replace(pager, ...pagerLinks(page, status));
    } catch (error) {
      if (context.left) return;
      replace(problem, errorBox(error));
      // Without a token every poll would ask again: wait for the reader to reload instead.
      if (error.status === 401) polling = false;
    } finally {
      inFlight = false;
    }
  };
  await poll();
  context.every(POLL_MS, poll);
}

function listPath(status, offset) {
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset });
  if (status) query.set("status", status);
  return `/finetune?${query}`;
}

function statusFilter(current) {
  const select = h(
    "select",
    {
      id: "status-filter",
      "data-testid": "status-filter",
      onchange: (event) => {
        const status = event.target.value;
        location.hash = status ? `#/jobs?status=${status}` : "#/jobs";
      },
    },
    STATUSES.map((s) => h("option", { value: s, selected: s === current }, s || "all")),
  );
  return h("div", { class: "filters" }, h("label", { for: "status-filter" }, "Status "), select);
}

function pagerLinks(page, status) {
  const link = (offset, text) => {
    const query = new URLSearchParams({ offset });
    if (status) query.set("status", status);
    return h("a", { href: `#/jobs?${query}` }, text);
  };
  const last = Math.min(page.offset + page.items.length, page.total);
  const parts = [`${page.total ? page.offset + 1 : 0}–${last} of ${page.total}`];
  if (page.offset > 0) parts.unshift(link(Math.max(0, page.offset - page.limit), "← newer"), " ");
  if (last < page.total) parts.push(" ", link(page.offset + page.limit, "older →"));
  return parts;
}

/** The table body, updated in place so that polling does not steal focus or flicker. */
class JobsTable {
  constructor(context) {
    this.context = context;
    this.rows = new Map();
    this.streams = new Map();
    this.body = h("tbody");
    this.empty = h(
      "p",
      { class: "muted", "data-testid": "jobs-empty", hidden: true },
      "No jobs yet. ",
    );
    this.empty.append(h("a", { href: "#/new" }, "Start one."));
    const head = ["Job", "Model", "Status", "Progress", "Created", "Duration", ""].map((t) =>
      h("th", { scope: "col" }, t),
    );
    this.element = h(
      "div",
      { class: "table-scroll" },
      h(
        "table",
        { class: "jobs", "data-testid": "jobs-table" },
        h("thead", null, h("tr", null, head)),
        this.body,
      ),
      this.empty,
    );
    context.every(1000, () => this.rows.forEach((row) => row.tick()));
  }

  show(jobs) {
    const seen = new Set();
    jobs.forEach((job) => {
      seen.add(job.job_id);
      let row = this.rows.get(job.job_id);
      if (!row) {
        row = new JobRow(this.context);
        this.rows.set(job.job_id, row);
      }
      row.update(job);
      this.body.append(row.element); // moves it into list order
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.element.remove();
        this.rows.delete(id);
      }
    }
    this.empty.hidden = jobs.length > 0;
    this.followRunning(jobs);
  }

  followRunning(jobs) {
    for (const [id, controller] of this.streams) {
      if (!this.rows.has(id)) controller.abort();
    }
    for (const job of jobs) {
      if (
        job.status !== "running" ||
        this.streams.has(job.job_id) ||
        this.streams.size >= MAX_STREAMS
      )
        continue;
      const controller = new AbortController();
      this.context.signal.addEventListener("abort", () => controller.abort());
      this.streams.set(job.job_id, controller);
      const row = this.rows.get(job.job_id);
      followJob(
        job.job_id,
        { state: (state) => row.update(state), progress: (progress) => row.update({ progress }) },
        { signal: controller.signal },
      ).finally(() => this.streams.delete(job.job_id));
    }
  }
}

/** One job's row. */
class JobRow {
  constructor(context) {
    this.context = context;
    this.job = {};
    this.cells = {
      id: h("td"),
      model: h("td"),
      status: h("td"),
      progress: h("td", { "data-testid": "job-progress-cell" }),
      created: h("td"),
      duration: h("td"),
      actions: h("td", { class: "row-actions" }),
    };
    this.element = h("tr", { "data-testid": "job-row" }, Object.values(this.cells));
  }

  /** Merge what is known now (a list item, a state event or a progress event). */
  update(fields) {
    const before = this.job;
    this.job = { ...this.job, ...fields };
    const job = this.job;
    if (!before.job_id) this.fill(job);
    this.element.dataset.status = job.status;
    replace(this.cells.status, badge(job.status, "job-row-status"));
    const fraction = jobFraction(job.status, job.progress, job.config);
    replace(
      this.cells.progress,
      h("progress", {
        max: 100,
        value: Math.round(fraction * 100),
        "aria-label": `Progress of job ${shortId(job.job_id)}`,
      }),
      ` ${Math.round(fraction * 100)} %`,
    );
    this.tick();
    // Progress arrives several times a second: a button rebuilt that often loses clicks.
    if (before.status !== job.status || before.cancel_requested !== job.cancel_requested) {
      replace(this.cells.actions, this.cancelButton());
    }
  }

  /** The cells that never change. */
  fill(job) {
    this.element.dataset.jobId = job.job_id;
    const href = `#/jobs/${encodeURIComponent(job.job_id)}`;
    replace(this.cells.id, h("a", { href, title: job.job_id }, shortId(job.job_id)));
    replace(this.cells.model, job.model_name ?? "");
    replace(this.cells.created, dateTime(job.created_at));
  }

  tick() {
    replace(this.cells.duration, duration(jobSeconds(this.job)));
  }

  cancelButton() {
    const job = this.job;
    if (job.status !== "queued" && job.status !== "running") return null;
    return h(
      "button",
      {
        type: "button",
        class: "danger small",
        "data-testid": "cancel-job",
        disabled: job.cancel_requested,
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            this.update(await sendJson("DELETE", `/finetune/${encodeURIComponent(job.job_id)}`));
            notify(`Job ${shortId(job.job_id)}: cancellation requested.`);
          } catch (error) {
            if (this.context.left) return;
            notify(error.message, "error");
            event.target.disabled = false;
          }
        },
      },
      job.cancel_requested ? "Cancelling…" : "Cancel",
    );
  }
}
