"""The job store: fine-tuning jobs queued by the API and claimed by workers under a lease.

Never imports TensorFlow: the API tier imports this package and must start fast.
"""

from service.jobs.records import (
    FINAL_STATES,
    IdempotencyRecord,
    IdempotencyState,
    Job,
    JobState,
    LeaseLostError,
)
from service.jobs.store import JobPage, JobStore

__all__ = [
    "FINAL_STATES",
    "IdempotencyRecord",
    "IdempotencyState",
    "Job",
    "JobPage",
    "JobState",
    "JobStore",
    "LeaseLostError",
]
