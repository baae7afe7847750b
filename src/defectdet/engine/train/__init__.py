"""``defectdet train``: set-up (splits, resolved values, run folder), the loop, schedule,
per-epoch history and DDP."""
