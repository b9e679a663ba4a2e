"""Fine-tuning as a job: train -> export -> publish, once (``run``), with the queue loop
(``worker``, ``ftserve worker``) and the local command (``command``, ``ftserve train``) on top.

This is the only package that ties training, the exporter, the repository contract and the
job store together; nothing but the CLI imports it.
"""
