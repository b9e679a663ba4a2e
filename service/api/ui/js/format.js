// Numbers, times and job progress as people read them.

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** A fraction as a percentage: 0.8333 -> "83.3 %"; "–" when unknown. */
export function percent(value, digits = 1) {
  return typeof value === "number" ? `${(value * 100).toFixed(digits)} %` : "–";
}

/** A number with a few decimals; "–" when unknown. */
export function decimal(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

/** Seconds as "1 h 02 m", "3 m 05 s" or "42 s". */
export function duration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const pad = (n) => String(n).padStart(2, "0");
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} m`;
  if (s >= 60) return `${Math.floor(s / 60)} m ${pad(s % 60)} s`;
  return `${s} s`;
}

/** An ISO time as the reader's local date and time. */
export function dateTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** How long a job ran (until now while it runs), in seconds; null before it started. */
export function jobSeconds(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return (end - Date.parse(job.started_at)) / 1000;
}

/**
 * The training phases a job's config asks for, with their epoch counts.
 *
 * Jobs carry their config with every default filled in, as the API stored it.
 */
export function plannedPhases(config = {}) {
  const phases = [{ phase: "head", epochs: config.epochs || 1 }];
  const unfreezes = config.fine_tune_layers > 0 || (config.fine_tune_at ?? null) !== null;
  if (unfreezes && config.fine_tune_epochs > 0) {
    phases.push({ phase: "fine_tune", epochs: config.fine_tune_epochs });
  }
  return phases;
}

// Work before the planned phases: the feature pass and the head search on its cache.
const BEFORE_PHASES = new Set(["features", "head_search"]);

/**
 * How far a job is, 0 to 1, over all the epochs of its phases.
 *
 * Feature extraction counts as the start and evaluation/publishing as the end; a phase that
 * stopped early (early stopping) simply jumps to the next.
 */
export function jobFraction(status, progress, config) {
  if (status === "succeeded") return 1;
  if (!progress || !progress.phase || status === "queued") return 0;
  const phases = plannedPhases(config);
  const index = phases.findIndex((p) => p.phase === progress.phase);
  if (index < 0) return BEFORE_PHASES.has(progress.phase) ? 0 : 0.99;
  const total = phases.reduce((sum, p) => sum + p.epochs, 0);
  const before = phases.slice(0, index).reduce((sum, p) => sum + p.epochs, 0);
  const planned = phases[index].epochs;
  const epochs = progress.epochs || planned;
  const steps = (progress.epoch || 1) - 1 + (progress.step || 0) / (progress.steps || 1);
  const within = Math.min(1, steps / epochs);
  return Math.min(0.99, (before + within * planned) / total);
}

/** The phase names people see. */
export function phaseName(phase) {
  const names = {
    features: "computing features",
    head_search: "choosing the head",
    head: "phase 1: head",
    fine_tune: "phase 2: fine-tune",
    evaluate: "evaluating",
    publishing: "publishing",
  };
  return names[phase] || phase || "–";
}

/** The first characters of a job id, enough to tell jobs apart. */
export function shortId(id) {
  return String(id).slice(0, 8);
}
