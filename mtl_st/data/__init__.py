"""Task data: reading (`readers`), a task's configuration entry (`arguments`), splits and labels (`splits`), each task
type's data side (`task_data`, with `labels` and `windows`), batching (`sampling`) and a run's whole data set-up
(`prepare`)."""
