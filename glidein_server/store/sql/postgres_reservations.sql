-- Bounded reservations in the PostgreSQL store (glidein_server.store.postgres_reservations); the
-- table and its index are made by migration_9 in postgres.sql. The reservations table holds a few
-- rows; each of their jobs and pilots is read by its key through a scalar subquery, which the
-- planner runs row by row (a join or EXISTS may be planned as a scan of every job or pilot).

-- name: reservation_gate
-- Whether any hold is in force ($1: now - max_hold_s), and the submission of the oldest of the first
-- few idle multicore jobs of each shape: read every few seconds, not per claim.
SELECT (SELECT count(*) FROM reservations r
        WHERE r.since >= $1 AND (SELECT j.state FROM jobs j WHERE j.id = r.job_id) = 'idle'),
       (SELECT min(j.submitted_at) FROM (
            SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites FROM idle_shape_deltas WHERE cpus > 1
            GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(n) > 0
        ) s CROSS JOIN LATERAL (
            SELECT submitted_at FROM jobs
            WHERE state = 'idle' AND cpus > 1 AND cpus = s.cpus AND memory_mb = s.memory_mb AND gpus = s.gpus
              AND disk_mb = s.disk_mb AND walltime_s = s.walltime_s AND sites = s.sites
            ORDER BY priority DESC, id
            LIMIT {per_shape}
        ) j);

-- name: reservation_read
-- The pilot's own hold (kind 0; the job's columns NULL once it is no longer idle), then the first
-- few idle multicore jobs of each shape that fits the whole pilot (kind 1), each with whether another
-- running pilot holds cores for it: one index seek per shape; then the other running pilots' holds in
-- force (kind 2), for their jobs' owners. $1 pilot, $2 now - max_hold_s, $3..$6 the pilot's cpus,
-- memory, GPUs, disk, $7 its lifetime, $8 ',site,'.
SELECT 0 AS kind, r.job_id, r.since, r.rest_until, j.cpus, j.memory_mb, j.gpus, j.disk_mb, j.walltime_s,
       0 AS priority, false AS held, NULL::text AS owner
FROM reservations r LEFT JOIN jobs j ON j.id = r.job_id AND j.state = 'idle'
WHERE r.pilot_id = $1
UNION ALL
SELECT 1, j.id, j.submitted_at, 0, j.cpus, j.memory_mb, j.gpus, j.disk_mb, j.walltime_s, j.priority,
       coalesce((SELECT (SELECT p.state FROM pilots p WHERE p.id = h.pilot_id) FROM reservations h
                 WHERE h.job_id = j.id AND h.pilot_id <> $1 AND h.since >= $2), '') = 'running',
       j.owner
FROM (
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites FROM idle_shape_deltas
    WHERE cpus > 1 AND cpus <= $3 AND memory_mb <= $4 AND gpus <= $5 AND disk_mb <= $6 AND walltime_s <= $7
      AND (sites = '' OR position($8 in sites) > 0)
    GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(n) > 0
) s CROSS JOIN LATERAL (
    SELECT id, cpus, memory_mb, gpus, disk_mb, walltime_s, priority, submitted_at, owner FROM jobs
    WHERE state = 'idle' AND cpus > 1 AND cpus = s.cpus AND memory_mb = s.memory_mb AND gpus = s.gpus
      AND disk_mb = s.disk_mb AND walltime_s = s.walltime_s AND sites = s.sites
    ORDER BY priority DESC, id
    LIMIT {per_shape}
) j
UNION ALL
SELECT 2, h.job_id, h.since, 0, NULL, NULL, NULL, NULL, NULL, 0, true, o.owner
FROM reservations h CROSS JOIN LATERAL (SELECT j.owner FROM jobs j WHERE j.id = h.job_id AND j.state = 'idle') o
WHERE h.pilot_id <> $1 AND h.since >= $2 AND (SELECT p.state FROM pilots p WHERE p.id = h.pilot_id) = 'running';

-- name: reservation_lapse
UPDATE reservations SET job_id = NULL, rest_until = $1 WHERE pilot_id = $2;

-- name: reservation_take_over
-- A hold by another pilot that ran out (its pilot has not synced since): that pilot rests.
UPDATE reservations SET job_id = NULL, rest_until = since + 2 * $3 WHERE job_id = $1 AND since < $2;

-- name: reservation_clear
-- The pilot's own old row, and the rows of pilots that are no longer running.
DELETE FROM reservations r
WHERE r.pilot_id = $1 OR (SELECT p.state FROM pilots p WHERE p.id = r.pilot_id) IS DISTINCT FROM 'running';

-- name: reservation_insert
-- The unique index on job_id decides between replicas: the second to reserve one job inserts nothing.
INSERT INTO reservations (pilot_id, job_id, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING job_id;

-- name: reservations_live
SELECT r.pilot_id, r.job_id, r.since FROM reservations r
WHERE r.since >= $1 AND (SELECT j.state FROM jobs j WHERE j.id = r.job_id) = 'idle'
  AND (SELECT p.state FROM pilots p WHERE p.id = r.pilot_id) = 'running'
ORDER BY r.pilot_id;
