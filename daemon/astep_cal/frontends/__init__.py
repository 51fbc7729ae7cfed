"""Front-ends: they decide *when* and *where* a night runs, never *what* is done to it.

`cli` (the `astep-cal` command), the daemon (`service` main thread, `worker` thread, `watcher` file
events and night readiness), `reprocess` (the archive on a Dask cluster), and the daemon's control files
and status table (`control`, `status`). Every one of them calls the engine (`astep_cal.engine`).
"""
