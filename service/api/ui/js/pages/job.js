// One job: live progress and curves while it runs; its evaluation once it has finished.

import { getJson, sendJson } from "../api.js";
import { badge, errorBox, h, notify, replace } from "../dom.js";
import { TERMINAL, dateTime, duration, jobSeconds, shortId } from "../format.js";
import { followJob } from "../jobstream.js";
import { confusionTable } from "../views/confusion.js";
import { Curves } from "../views/curves.js";
import { evaluationSummary, perClassTable, promotionView } from "../views/evaluation.js";
import { misclassifiedGallery } from "../views/gallery.js";
import { ProgressPanel } from "../views/progress.js";

/** Render `#/jobs/<id>`. */
export async function jobPage(context) {
  const [jobId] = context.params;
  let job = await getJson(`/finetune/${encodeURIComponent(jobId)}`, context.signal);
  const header = h("div", { class: "page-head" });
  const meta = h("dl", { class: "meta", "data-testid": "job-meta" });
  const progress = new ProgressPanel(job.config);
  const curves = new Curves();
  const outcome = h("div", { class: "outcome", "data-testid": "job-outcome" });
  context.onLeave(() => curves.destroy());
  replace(context.view, header, meta, progress.element, curves.element, outcome);

  const cancelled = (updated) => {
    Object.assign(job, updated);
    show();
  };
  const show = () => {
    replace(header, ...heading(job, context, cancelled));
    replace(meta, ...metaItems(job));
    progress.update(job.status, job.progress);
  };
  for (const row of job.history || []) curves.add(row);
  show();
  context.every(1000, () => !job.finished_at && job.started_at && replace(meta, ...metaItems(job)));
  if (TERMINAL.has(job.status)) {
    replace(outcome, ...outcomeOf(job, context));
    return;
  }
  await followJob(
    jobId,
    {
      state: (state) => {
        Object.assign(job, state);
        show();
      },
      progress: (latest) => {
        job.progress = latest;
        progress.update(job.status, latest);
      },
      epoch: (row) => curves.add(row),
    },
    { signal: context.signal, onError: (error) => notify(error.message, "error") },
  );
  if (context.left) return;
  // The stream ends with the final state; the full job has the result and history.
  job = await getJson(`/finetune/${encodeURIComponent(jobId)}`, context.signal);
  for (const row of job.history || []) curves.add(row);
  show();
  replace(outcome, ...outcomeOf(job, context));
}

function heading(job, context, onChange) {
  const cancellable = job.status === "queued" || job.status === "running";
  const cancel = cancellable
    ? h(
        "button",
        {
          type: "button",
          class: "danger",
          "data-testid": "cancel-job",
          disabled: job.cancel_requested,
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              onChange(await sendJson("DELETE", `/finetune/${encodeURIComponent(job.job_id)}`));
              notify("Cancellation requested.");
            } catch (error) {
              if (!context.left) notify(error.message, "error");
              event.target.disabled = false;
            }
          },
        },
        job.cancel_requested ? "Cancelling…" : "Cancel job",
      )
    : null;
  return [
    h("h1", { title: job.job_id }, `Job ${shortId(job.job_id)} `, badge(job.status, "job-status")),
    h("div", { class: "actions" }, cancel),
  ];
}

function metaItems(job) {
  const model = job.result?.model ?? job.model_name;
  const version = job.result?.version;
  const modelLink = h(
    "a",
    { href: `#/models/${encodeURIComponent(model)}`, "data-testid": "model-link" },
    model,
  );
  const items = [
    ["Model", version ? [modelLink, ` version ${version}`] : modelLink],
    ["Backbone", `${job.config?.base_model} (${job.config?.weights} weights)`],
    ["Created", dateTime(job.created_at)],
    ["Started", dateTime(job.started_at)],
    ["Finished", dateTime(job.finished_at)],
    ["Duration", duration(jobSeconds(job))],
    ["Attempts", `${job.attempts} of ${job.max_attempts ?? "?"}`],
  ];
  return items.map(([name, value]) => h("div", null, h("dt", null, name), h("dd", null, value)));
}

function outcomeOf(job, context) {
  if (job.status === "failed") {
    const message = job.error ? `${job.error.message} (${job.error.code})` : "The job failed.";
    return [
      h("section", { class: "card" }, h("h2", null, "Failed"), errorBox(message, "job-error")),
    ];
  }
  if (job.status === "cancelled") {
    return [
      h(
        "section",
        { class: "card" },
        h("h2", null, "Cancelled"),
        h("p", null, "The job was cancelled."),
      ),
    ];
  }
  const result = job.result;
  if (!result || !result.evaluation) {
    return [h("p", { class: "muted" }, "This job has no evaluation.")];
  }
  const evaluation = result.evaluation;
  const classes = result.classes || Object.keys(evaluation.per_class || {});
  const summary = h(
    "section",
    { class: "card" },
    h("h2", null, "Evaluation on the validation split"),
    evaluationSummary(evaluation),
    result.promotion ? h("h3", null, "Promotion") : null,
    result.promotion ? promotionView(result.promotion) : null,
    h(
      "p",
      null,
      h("a", { href: `#/models/${encodeURIComponent(result.model)}` }, `Model ${result.model}`),
      " · ",
      h(
        "a",
        { href: `#/predict?model=${encodeURIComponent(result.model)}&version=${result.version}` },
        "Try it",
      ),
    ),
  );
  const matrices = h(
    "section",
    { class: "card" },
    h("h2", null, "Confusion matrix"),
    confusionTable(classes, evaluation.confusion_matrix || []),
    h("h3", null, "Per class"),
    perClassTable(classes, evaluation.per_class || {}),
  );
  return [summary, matrices, misclassifiedGallery(result.model, result.version, context)];
}
