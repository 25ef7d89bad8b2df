"""What users see: the job's result, its HTML, plots, progress and the plan's projection."""
