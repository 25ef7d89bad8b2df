"""Where a job runs: local cluster shapes, the engine choice, the job's worker plugins."""
