-- Bounded reservations in the SQLite store (glidein_server.store.sqlite_reservations); the table and
-- its index are made by migration_6 in sqlite.sql.

-- name: reservation_gate
-- Whether any hold is in force (?1: now - max_hold_s), and the submission of the oldest of the first
-- few idle multicore jobs of each shape: read every few seconds, not per claim.
SELECT (SELECT count(*) FROM reservations r
        WHERE r.since >= ?1 AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = r.job_id AND j.state = 'idle')),
       (SELECT min(j.submitted_at) FROM idle_shapes s JOIN jobs j ON j.id IN (
            SELECT id FROM jobs INDEXED BY jobs_idle_multicore
            WHERE state = 'idle' AND cpus > 1 AND cpus = s.cpus AND memory_mb = s.memory_mb AND gpus = s.gpus
              AND disk_mb = s.disk_mb AND walltime_s = s.walltime_s AND sites = s.sites
            ORDER BY priority DESC, id LIMIT {per_shape}
        )
        WHERE s.n > 0 AND s.cpus > 1);

-- name: reservation_read
-- The pilot's own hold (kind 0; the job's columns NULL once it is no longer idle), then the first
-- few idle multicore jobs of each shape that fits the whole pilot (kind 1), each with whether another
-- running pilot holds cores for it: one index seek per shape; then the other running pilots' holds in
-- force (kind 2), for their jobs' owners: the few rows of reservations, each job and pilot found by
-- its key (CROSS JOIN keeps that order; a join was planned as a walk of every idle job). ?1 pilot,
-- ?2 now - max_hold_s, ?3..?6 the pilot's cpus, memory, GPUs, disk, ?7 its lifetime, ?8 ',site,'.
SELECT 0, r.job_id, r.since, r.rest_until, j.cpus, j.memory_mb, j.gpus, j.disk_mb, j.walltime_s, 0, 0, NULL
FROM reservations r LEFT JOIN jobs j ON j.id = r.job_id AND j.state = 'idle'
WHERE r.pilot_id = ?1
UNION ALL
SELECT 1, j.id, j.submitted_at, 0, j.cpus, j.memory_mb, j.gpus, j.disk_mb, j.walltime_s, j.priority,
       EXISTS (SELECT 1 FROM reservations h JOIN pilots p ON p.id = h.pilot_id
               WHERE h.job_id = j.id AND h.pilot_id != ?1 AND h.since >= ?2 AND p.state = 'running'),
       j.owner
FROM idle_shapes s JOIN jobs j ON j.id IN (
    SELECT id FROM jobs INDEXED BY jobs_idle_multicore
    WHERE state = 'idle' AND cpus > 1 AND cpus = s.cpus AND memory_mb = s.memory_mb AND gpus = s.gpus
      AND disk_mb = s.disk_mb AND walltime_s = s.walltime_s AND sites = s.sites
    ORDER BY priority DESC, id LIMIT {per_shape}
)
WHERE s.n > 0 AND s.cpus > 1 AND s.cpus <= ?3 AND s.memory_mb <= ?4 AND s.gpus <= ?5 AND s.disk_mb <= ?6
  AND s.walltime_s <= ?7 AND (s.sites = '' OR instr(s.sites, ?8) > 0)
UNION ALL
SELECT 2, h.job_id, h.since, 0, NULL, NULL, NULL, NULL, NULL, 0, 1, j.owner
FROM reservations h CROSS JOIN jobs j ON j.id = h.job_id AND j.state = 'idle'
CROSS JOIN pilots p ON p.id = h.pilot_id AND p.state = 'running'
WHERE h.pilot_id != ?1 AND h.since >= ?2;

-- name: reservation_lapse
UPDATE reservations SET job_id = NULL, rest_until = ? WHERE pilot_id = ?;

-- name: reservation_take_over
-- A hold by another pilot that ran out (its pilot has not synced since): that pilot rests.
UPDATE reservations SET job_id = NULL, rest_until = since + 2 * ?3 WHERE job_id = ?1 AND since < ?2;

-- name: reservation_clear
-- The pilot's own old row, and the rows of pilots that are no longer running.
DELETE FROM reservations
WHERE pilot_id = ? OR NOT EXISTS (SELECT 1 FROM pilots p WHERE p.id = reservations.pilot_id AND p.state = 'running');

-- name: reservation_insert
INSERT INTO reservations (pilot_id, job_id, since) VALUES (?, ?, ?) ON CONFLICT DO NOTHING RETURNING job_id;

-- name: reservations_live
-- (from the reservations, a few rows; each job and pilot found by its key)
SELECT r.pilot_id, r.job_id, r.since FROM reservations r
WHERE r.since >= ? AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = r.job_id AND j.state = 'idle')
  AND EXISTS (SELECT 1 FROM pilots p WHERE p.id = r.pilot_id AND p.state = 'running')
ORDER BY r.pilot_id;
