"""One router per resource: fine-tuning jobs, predictions, models, health and metrics."""
