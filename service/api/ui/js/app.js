// The ftserve page: fine-tuning jobs, models and predictions, on top of the HTTP API.

import { jobPage } from "./pages/job.js";
import { jobsPage } from "./pages/jobs.js";
import { modelPage } from "./pages/model.js";
import { modelsPage } from "./pages/models.js";
import { newJobPage } from "./pages/new.js";
import { predictPage } from "./pages/predict.js";
import { startRouter } from "./router.js";
import { setUpTokenControls } from "./token.js";

const ROUTES = [
  [/^\/jobs$/, "jobs", jobsPage],
  [/^\/jobs\/([^/]+)$/, "jobs", jobPage],
  [/^\/models$/, "models", modelsPage],
  [/^\/models\/([^/]+)$/, "models", modelPage],
  [/^\/predict$/, "predict", predictPage],
  [/^\/new$/, "new", newJobPage],
];

setUpTokenControls();
startRouter(document.getElementById("view"), ROUTES, "#/jobs");
