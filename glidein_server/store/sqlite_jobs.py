"""Jobs in the SQLite store as users see them: submit, list, cancel, retry, attempts, outputs, file access."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import AttemptView, JobSpec, JobState, JobView, OutputFile, Role
from glidein_server.policy import demand as dm
from glidein_server.store.added import added
from glidein_server.store.base import JobFilter, Principal
from glidein_server.store.history import events_by_job, with_history
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_sites import SqliteSites, spec_decoder
from glidein_server.store.sqlite_usage import attempt_views, result_usage

spec_encoder = msgspec.json.Encoder()


class SqliteJobs(SqliteSites):
    async def add_jobs(self, owner: str, specs: Sequence[JobSpec], now: float) -> list[int]:
        groups = added(specs)
        shapes = [(*shape, n) for shape, n in groups.shapes.items()]
        counts = [(owner, multicore, n, groups.cores[multicore]) for multicore, n in groups.multicore.items()]
        labels = [(key, value, owner, len(jobs)) for (key, value), jobs in groups.labels.items()]
        encode = spec_encoder.encode

        def tx(db: sqlite3.Connection) -> list[int]:
            # The writer holds the database: the new jobs take the ids SQLite would give them.
            first = db.execute(Q["jobs_max_id"]).fetchone()[0] + 1
            db.executemany(
                Q["job_insert"],
                [
                    (first + i, owner, encode(s), *shape, s.priority, s.max_retries, now)
                    for i, (s, shape) in enumerate(zip(specs, groups.job_shapes, strict=True))
                ],
            )
            if labels:  # one row per label, with the batch's jobs that carry it
                db.executemany(
                    Q["job_labels_add"],
                    [(key, value, first, encode(jobs)) for (key, value), jobs in groups.labels.items()],
                )
                db.executemany(Q["label_counts_add"], labels)
            db.executemany(Q["idle_shapes_add"], shapes)
            db.executemany(Q["job_counts_add"], counts)
            return list(range(first, first + len(specs)))

        return await self._tx(tx)

    def _job_view(self, db: sqlite3.Connection, row: Sequence[Any]) -> JobView:
        (jid, owner, state, spec_b, retries, attempts, submitted, finished, exit_code, reason, site, result_attempt) = (
            row
        )
        spec = spec_decoder.decode(spec_b)
        outputs: list[OutputFile] = []
        if result_attempt is not None:
            outputs = [
                OutputFile(name=n, sha256=h, size=sz)
                for n, h, sz in db.execute(Q["outputs_of_attempt"], (result_attempt,))
            ]
        note = None
        if state == JobState.IDLE.value:
            note = dm.unrunnable_note(
                spec.cpus,
                spec.memory_mb,
                spec.gpus,
                spec.disk_mb,
                spec.walltime_s,
                frozenset(spec.sites) if spec.sites else None,
                self._site_shapes,
            )
        return JobView(
            id=jid,
            owner=owner,
            state=JobState(state),
            spec=spec,
            retries_used=retries,
            attempts=attempts,
            submitted_at=submitted,
            finished_at=finished,
            exit_code=exit_code,
            reason=reason,
            site=site,
            outputs=outputs,
            note=note,
            usage=None if result_attempt is None else result_usage(db, result_attempt, spec.cpus),
        )

    def _read_job(self, db: sqlite3.Connection, job_id: int) -> JobView | None:
        row = db.execute(Q["job_get"], (job_id,)).fetchone()
        return None if row is None else _with_history(db, [self._job_view(db, row)])[0]

    async def list_jobs(self, flt: JobFilter) -> tuple[list[JobView], dict[str, int]]:
        where: list[str] = []
        args: list[Any] = []
        if flt.owner is not None:
            where.append(Q["job_where_owner"])
            args.append(flt.owner)
        if flt.ids is not None:
            where.append(Q["job_where_ids"])
            args.append(json.dumps(list(flt.ids)))
        page_where, page_args = where, args
        if flt.state:
            page_where, page_args = [*where, Q["job_where_state"]], [*args, flt.state]
        past = ("before" if flt.newest_first else "after") if flt.after is not None else None
        keyset = [flt.after] if flt.after is not None else []
        order = "DESC" if flt.newest_first else "ASC"
        labels = flt.all_labels

        def read(db: sqlite3.Connection) -> tuple[list[JobView], dict[str, int]]:
            counts_args: list[Any]
            if labels:  # walk the rarest label's index in id order, the others looked up per job
                ordered = sorted(labels, key=lambda kv: db.execute(Q["label_total"], kv).fetchone()[0])
                walked = [*page_where, Q[f"label_where_{past}"]] if past else page_where
                page_sql, first = _labelled("job_page_labelled", ordered, walked, order)
                counts_sql, counts_args = _labelled("job_counts_labelled", ordered, where, order)
                page_args_all = [*first, *page_args, *keyset, flt.limit, flt.offset]
                counts_args = [*counts_args, *args]
                if len(labels) == 1 and flt.ids is None:  # from the counts kept by label
                    counts_sql, counts_args = Q["label_counts_of"], [*labels[0], flt.owner, flt.owner]
            else:
                walked = [*page_where, Q[f"job_where_{past}"]] if past else page_where
                page_sql = Q["job_page"].format(where=" AND ".join(walked) or "1", order=order)
                page_args_all = [*page_args, *keyset, flt.limit, flt.offset]
                counts_sql, counts_args = Q["job_counts"].format(where=" AND ".join(where) or "1"), args
                if flt.ids is None:  # from the running aggregate, not a count of the jobs
                    counts_sql, counts_args = Q["job_counts_of"], [flt.owner, flt.owner]
            rows = db.execute(page_sql, page_args_all).fetchall()
            counts = dict(db.execute(counts_sql, counts_args).fetchall()) if flt.counts else {}
            return _with_history(db, [self._job_view(db, r) for r in rows]), counts

        return await self._read(read, self._conn)

    async def get_job(self, job_id: int) -> JobView | None:
        return await self._read(self._read_job, self._conn, job_id)

    async def cancel_job(self, job_id: int, now: float) -> JobView:
        def tx(db: sqlite3.Connection) -> JobView:
            row = db.execute(Q["job_state"], (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"Job {job_id} does not exist.")
            if not JobState(row[0]).final:
                db.execute(Q["job_cancel"], (now, job_id))
            view = self._read_job(db, job_id)
            assert view is not None
            return view

        return await self._tx(tx)

    async def attempts_of(self, job_id: int) -> list[AttemptView]:
        return await self._read(lambda db: attempt_views(db, job_id), self._conn)

    async def job_output(self, job_id: int, name: str) -> OutputFile | None:
        def read(db: sqlite3.Connection) -> OutputFile | None:
            row = db.execute(Q["job_output"], (job_id, name)).fetchone()
            return None if row is None else OutputFile(name=row[0], sha256=row[1], size=row[2])

        return await self._read(read, self._conn)

    # --- files ------------------------------------------------------------------------------

    async def add_file_owner(self, sha256: str, owner: str, size: int) -> None:
        await self._tx(lambda db: db.execute(Q["file_owner_insert"], (sha256, owner, size)))

    async def may_read_file(self, sha256: str, principal: Principal) -> bool:
        def read(db: sqlite3.Connection) -> bool:
            if principal.role is Role.OPERATOR:
                return True
            if principal.role is Role.SITE:  # inputs of jobs that may run at the site, for out-of-job staging
                return self._site_may_read(db, principal.subject, sha256)
            if principal.role is Role.USER:
                who = principal.subject
                return db.execute(Q["file_user_may_read"], (sha256, who, sha256, who)).fetchone() is not None
            return db.execute(Q["file_pilot_may_read"], (int(principal.subject), sha256, sha256)).fetchone() is not None

        return await self._read(read, self._conn)


def _with_history(db: sqlite3.Connection, views: list[JobView]) -> list[JobView]:
    """The views with their jobs' history (holds, releases, retries by request), in one query."""
    if not views:
        return views
    events = events_by_job(db.execute(Q["job_events_of"], (json.dumps([v.id for v in views]),)))
    return with_history(views, events)


def _labelled(block: str, labels: Sequence[tuple[str, str]], where: list[str], order: str) -> tuple[str, list[str]]:
    """SQL block ``block`` over the jobs carrying every label, the first label's index walked in
    ``order``; with the arguments of its labels (those of ``where`` follow)."""
    joins = " ".join(Q["job_join_label"].format(n=i) for i in range(1, len(labels)))
    sql = Q[block].format(labels=joins, where=" AND ".join(where) or "1", order=order)
    return sql, [x for label in (*labels[1:], labels[0]) for x in label]
