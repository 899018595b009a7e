"""What the store already holds: runs by ``initlab.run_key``, runs left RUNNING by a ``track``
process that was killed, and the litter of interrupted ones that a later ``track`` completed."""

from __future__ import annotations

import os
import socket

from initlab.core.io import pid_alive
from initlab.tracking.location import tracking_uri
from initlab.tracking.store import deferred_signals, is_sql

RUN_KEY_TAG, OWNER_TAG, DVC_EXP_TAG = "initlab.run_key", "initlab.owner", "dvc.exp_name"


def end_orphans(cl, experiment: str) -> int:
    """End KILLED the RUNNING runs whose ``track`` process on this host no longer exists."""
    ended = 0
    for run in cl.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=50_000):
        host, _, pid = run.data.tags.get(OWNER_TAG, "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            cl.set_terminated(run.info.run_id, "KILLED")
            ended += 1
    return ended


def store_runs(cl, experiment: str) -> dict[str, list]:
    """``initlab.run_key`` -> the runs of ``experiment`` (not deleted) with that key, latest first."""
    keys: dict[str, list] = {}
    token = None
    while True:
        page = cl.search_runs(
            [experiment],
            "",
            max_results=10_000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        for run in page:
            if key := run.data.tags.get(RUN_KEY_TAG):
                keys.setdefault(key, []).append(run)
        if not (token := page.token):
            return keys


def sweep_litter(cl, runs: dict[str, list]) -> int:
    """Delete (MLflow's soft delete: hidden, purged by ``mlflow gc``) every FAILED or KILLED run
    whose key a FINISHED run holds: the leftover of an interrupted ``track`` that a later one
    completed. Returns how many; ``runs`` (``store_runs``) loses them."""
    deleted = 0
    for same in runs.values():
        if any(r.info.status == "FINISHED" for r in same):
            for r in [r for r in same if r.info.status in ("FAILED", "KILLED")]:
                with deferred_signals(is_sql(tracking_uri())):
                    cl.delete_run(r.info.run_id)
                same.remove(r)
                deleted += 1
    return deleted
