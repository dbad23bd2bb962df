-- SQL of the SQLite store, in named blocks (`-- name: NAME`), loaded by glidein_server.store.sqlfile.
-- Version 1 of the schema is `schema`, `tokens_migrate` and `staging_schema` (idempotent, so they also
-- bring databases made before versions were recorded to version 1); blocks named migration_N (N >= 2)
-- upgrade it from version N-1 to N, each in one transaction.

-- name: schema
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,          -- sha256 of the token; the token itself is never stored
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked INTEGER NOT NULL DEFAULT 0,
    id TEXT,                        -- public id: the first 16 hex digits of the hash
    scopes TEXT NOT NULL DEFAULT '', -- space-separated; '' = every scope of the role
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS totp (
    subject TEXT PRIMARY KEY,       -- an operator
    secret BLOB NOT NULL,           -- encrypted with the key file named by totp_key_file
    created_at REAL NOT NULL,
    last_step INTEGER NOT NULL DEFAULT 0  -- newest time step used: a code is accepted once
);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    shape TEXT,
    last_seen REAL,
    start_failures INTEGER NOT NULL DEFAULT 0,   -- pilots in a row that ended before starting work
    last_failure_at REAL,
    health REAL NOT NULL DEFAULT 1.0              -- moving average of attempt success (1) and failure (0)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    spec BLOB NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    gpus INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    walltime_s INTEGER NOT NULL,
    sites TEXT NOT NULL,            -- '' = any site, else ',a,b,'
    priority INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    retries_used INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    finished_at REAL,
    exit_code INTEGER,
    reason TEXT,
    site TEXT,
    result_attempt INTEGER
);
-- Each user's jobs (each user's idle jobs by shape: jobs_idle_shape, from migration_3).
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    pilot_id INTEGER NOT NULL,
    site TEXT NOT NULL,
    lease TEXT NOT NULL,
    state TEXT NOT NULL,            -- claimed | running | ended
    outcome TEXT,
    exit_code INTEGER,
    reason TEXT,
    claimed_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_expires REAL NOT NULL,
    wall_s REAL,
    max_rss_mb REAL,
    stdout_tail TEXT NOT NULL DEFAULT '',
    stderr_tail TEXT NOT NULL DEFAULT '',
    cpu_s REAL,                     -- user + system CPU seconds of the job's process tree
    provenance BLOB                 -- JSON: where and how it ran, as the pilot reported it
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id);
CREATE INDEX IF NOT EXISTS attempts_pilot_active ON attempts (pilot_id) WHERE state != 'ended';
CREATE INDEX IF NOT EXISTS attempts_lease ON attempts (lease_expires) WHERE state != 'ended';
CREATE TABLE IF NOT EXISTS outputs (
    attempt_id INTEGER NOT NULL,
    job_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (attempt_id, name)
);
CREATE TABLE IF NOT EXISTS file_owners (
    sha256 TEXT NOT NULL,
    owner TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (sha256, owner)
);
CREATE TABLE IF NOT EXISTS pilots (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | running | ended
    batch_id TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    cpus INTEGER NOT NULL DEFAULT 0,
    memory_mb INTEGER NOT NULL DEFAULT 0,
    gpus INTEGER NOT NULL DEFAULT 0,
    disk_mb INTEGER NOT NULL DEFAULT 0,
    end_time REAL,
    free_cpus INTEGER NOT NULL DEFAULT 0,
    free_memory_mb INTEGER NOT NULL DEFAULT 0,
    free_gpus INTEGER NOT NULL DEFAULT 0,
    free_disk_mb INTEGER NOT NULL DEFAULT 0,
    lifetime_s REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    last_seen REAL,
    ended_at REAL,
    occupancy REAL,
    jobs_run INTEGER NOT NULL DEFAULT 0,
    exit_reason TEXT
);
CREATE INDEX IF NOT EXISTS pilots_live ON pilots (site) WHERE state != 'ended';
-- Running aggregate of idle jobs by shape: the demand is computed from this, never by a rescan.
CREATE TABLE IF NOT EXISTS idle_shapes (
    cpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    gpus INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    walltime_s INTEGER NOT NULL,
    sites TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (cpus, memory_mb, gpus, disk_mb, walltime_s, sites)
);
-- New jobs are counted in by their submit's statement `jobs_added_shapes`, not by a trigger per job.
CREATE TRIGGER IF NOT EXISTS jobs_idle_enter AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'idle' AND OLD.state != 'idle'
BEGIN
    INSERT INTO idle_shapes VALUES (NEW.cpus, NEW.memory_mb, NEW.gpus, NEW.disk_mb, NEW.walltime_s, NEW.sites, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_idle_leave AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'idle' AND NEW.state != 'idle'
BEGIN
    UPDATE idle_shapes SET n = n - 1
    WHERE cpus = OLD.cpus AND memory_mb = OLD.memory_mb AND gpus = OLD.gpus AND disk_mb = OLD.disk_mb
      AND walltime_s = OLD.walltime_s AND sites = OLD.sites;
END;

-- name: tokens_migrate
-- Columns added after the first release: ALTER TABLE runs for each one missing (see SqliteStore).
id TEXT
scopes TEXT NOT NULL DEFAULT ''
revoked_at REAL

-- name: sites_migrate
-- Columns added after the first release: ALTER TABLE runs for each one missing.
mode TEXT NOT NULL DEFAULT 'open'
max_cpus INTEGER
pilot_failure TEXT

-- name: attempts_migrate
-- Columns added after the first release: ALTER TABLE runs for each one missing.
cpu_s REAL
provenance BLOB
claim_seq INTEGER

-- name: tokens_index
UPDATE tokens SET id = substr(hash, 1, 16) WHERE id IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS tokens_id ON tokens (id);
CREATE INDEX IF NOT EXISTS tokens_subject ON tokens (role, subject);

-- name: wal_checkpoint
PRAGMA wal_checkpoint(PASSIVE);

-- name: data_version
-- Changes whenever another connection (another process) commits to the database.
PRAGMA data_version;

-- name: token_insert
INSERT INTO tokens (hash, role, subject, created_at, expires_at, id, scopes) VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: token_lookup
SELECT role, subject, expires_at, id, scopes FROM tokens WHERE hash = ? AND revoked = 0;

-- name: token_list
SELECT id, role, subject, scopes, created_at, expires_at, revoked_at FROM tokens
WHERE (? IS NULL OR role = ?) AND (? IS NULL OR subject = ?) AND (? OR revoked = 0)
ORDER BY created_at DESC LIMIT ?;

-- name: token_revoke
UPDATE tokens SET revoked = 1, revoked_at = ? WHERE id = ? AND revoked = 0 RETURNING id;

-- name: token_revoke_subject
UPDATE tokens SET revoked = 1, revoked_at = ? WHERE role = ? AND subject = ? AND revoked = 0 RETURNING id;

-- name: token_revoke_site_pilots
UPDATE tokens SET revoked = 1, revoked_at = ?
WHERE role = 'pilot' AND revoked = 0 AND subject IN (SELECT CAST(id AS TEXT) FROM pilots WHERE site = ?)
RETURNING id;

-- name: token_renew
UPDATE tokens SET expires_at = ? WHERE id = ? AND revoked = 0 AND expires_at IS NOT NULL AND expires_at < ?;

-- name: token_purge
DELETE FROM tokens WHERE (expires_at IS NOT NULL AND expires_at < ?) OR (revoked_at IS NOT NULL AND revoked_at < ?);

-- name: totp_set
INSERT INTO totp (subject, secret, created_at) VALUES (?, ?, ?)
ON CONFLICT (subject) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at, last_step = 0;

-- name: totp_get
SELECT secret FROM totp WHERE subject = ?;

-- name: totp_use
UPDATE totp SET last_step = ? WHERE subject = ? AND last_step < ?;

-- name: job_insert
INSERT INTO jobs (id, owner, state, spec, cpus, memory_mb, gpus, disk_mb, walltime_s, sites, priority,
                  max_retries, submitted_at)
VALUES (?, ?, 'idle', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: idle_owners
-- The users with idle jobs: one index seek per user (a skip scan), not a scan of the idle jobs.
WITH RECURSIVE o(owner) AS (
    SELECT min(owner) FROM jobs INDEXED BY jobs_idle_shape WHERE state = 'idle'
    UNION ALL
    SELECT (SELECT min(owner) FROM jobs INDEXED BY jobs_idle_shape WHERE state = 'idle' AND owner > o.owner)
    FROM o WHERE o.owner IS NOT NULL
)
SELECT owner FROM o WHERE owner IS NOT NULL;

-- name: idle_candidates_of_shape
-- One user's best idle jobs of one shape: a single index seek, however long the queue.
SELECT id, cpus, memory_mb, gpus, disk_mb, walltime_s, priority
FROM jobs INDEXED BY jobs_idle_shape
WHERE state = 'idle' AND owner = ? AND cpus = ? AND memory_mb = ? AND gpus = ? AND disk_mb = ? AND walltime_s = ?
  AND sites = ?
ORDER BY priority DESC, id
LIMIT ?;

-- name: busy_cores
-- Each user's cores in use, from the kept counts (summing the running jobs cost 3.8 ms a claim at 50,000).
SELECT owner, sum(cores) FROM job_counts WHERE state IN ('claimed', 'running') GROUP BY owner HAVING sum(cores) > 0;

-- name: claim_jobs
UPDATE jobs SET state = 'claimed', attempts = attempts + 1, site = ?
WHERE id IN (SELECT value FROM json_each(?)) AND state = 'idle'
RETURNING id, spec;

-- name: attempt_insert
INSERT INTO attempts (job_id, pilot_id, site, lease, state, claimed_at, lease_expires, claim_seq)
VALUES (?, ?, ?, ?, 'claimed', ?, ?, ?)
RETURNING id;

-- name: attempt_active
SELECT a.job_id, a.state, j.state, j.max_retries, j.retries_used
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.id = ? AND a.lease = ? AND a.pilot_id = ? AND a.state != 'ended';

-- name: attempt_start
UPDATE attempts SET state = 'running', started_at = ? WHERE id = ? AND lease = ? AND pilot_id = ? AND state = 'claimed'
RETURNING job_id;

-- name: job_running
UPDATE jobs SET state = 'running' WHERE id = ? AND state = 'claimed';

-- name: attempt_end
UPDATE attempts SET state = 'ended', outcome = ?, exit_code = ?, reason = ?, finished_at = ?, wall_s = ?,
    max_rss_mb = ?, stdout_tail = ?, stderr_tail = ?, cpu_s = ?, provenance = ?,
    started_at = coalesce(started_at, CASE WHEN ? > 0 THEN ? END)
WHERE id = ?;

-- name: job_done
UPDATE jobs SET state = 'done', finished_at = ?, exit_code = ?, reason = NULL, result_attempt = ?
WHERE id = ? AND state IN ('claimed', 'running');

-- name: job_failed
-- The failed attempt is the job's result: the outputs it left are what `glidein fetch` brings back.
UPDATE jobs SET state = 'failed', finished_at = ?, exit_code = ?, reason = ?, retries_used = retries_used + 1,
    result_attempt = ?
WHERE id = ? AND state IN ('claimed', 'running');

-- name: job_retry
UPDATE jobs SET state = 'idle', exit_code = ?, reason = ?, retries_used = retries_used + 1
WHERE id = ? AND state IN ('claimed', 'running');

-- name: job_requeue
UPDATE jobs SET state = 'idle', reason = ? WHERE id = ? AND state IN ('claimed', 'running');

-- name: outputs_of_attempt
SELECT name, sha256, size FROM outputs WHERE attempt_id = ? ORDER BY name;

-- name: output_insert
INSERT OR REPLACE INTO outputs (attempt_id, job_id, name, sha256, size) VALUES (?, ?, ?, ?, ?);

-- name: pilot_leases
UPDATE attempts SET lease_expires = ? WHERE pilot_id = ? AND state != 'ended' AND lease_expires < ?;

-- name: pilot_cancels
-- Attempts the pilot must stop: their job was cancelled or held.
SELECT a.id FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.pilot_id = ? AND a.state != 'ended' AND j.state IN ('cancelled', 'held');

-- name: recent_runtimes
SELECT a.wall_s, j.walltime_s FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.outcome = 'done' AND a.wall_s IS NOT NULL
ORDER BY a.id DESC LIMIT ?;

-- name: idle_too_long
SELECT 1 FROM idle_shapes WHERE n > 0 AND walltime_s > ? AND (sites = '' OR instr(sites, ?) > 0) LIMIT 1;

-- name: pilot_capacity
SELECT site, cpus, memory_mb, gpus, disk_mb, free_cpus, free_memory_mb, free_gpus, free_disk_mb, lifetime_s, last_seen
FROM pilots WHERE id = ? AND state = 'running';

-- name: pilot_update
UPDATE pilots SET free_cpus = ?, free_memory_mb = ?, free_gpus = ?, free_disk_mb = ?, lifetime_s = ?,
    last_seen = ?, occupancy = ?
WHERE id = ? AND state = 'running';

-- name: expired_attempts
SELECT a.id, a.job_id FROM attempts a WHERE a.state != 'ended' AND a.lease_expires < ?;

-- name: active_attempts_of_pilot
SELECT id, job_id FROM attempts WHERE pilot_id = ? AND state != 'ended';

-- name: active_claims_of_pilot
-- With the number of the pilot's sync whose answer carried each claim (NULL: not numbered).
SELECT id, job_id, claim_seq FROM attempts WHERE pilot_id = ? AND state != 'ended';

-- name: idle_shapes
SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, n FROM idle_shapes WHERE n > 0;

-- name: live_pilots_free
SELECT free_cpus, free_memory_mb, free_gpus, free_disk_mb, lifetime_s FROM pilots
WHERE site = ? AND state = 'running' AND last_seen >= ?;

-- name: site_start_failed
INSERT INTO sites (name, start_failures, last_failure_at) VALUES (?, 1, ?)
ON CONFLICT (name) DO UPDATE SET start_failures = start_failures + 1, last_failure_at = excluded.last_failure_at;

-- name: site_start_ok
UPDATE sites SET start_failures = 0 WHERE name = (SELECT site FROM pilots WHERE id = ?);

-- name: job_retry_grown
UPDATE jobs SET state = 'idle', exit_code = ?, reason = ?, retries_used = retries_used + 1,
    memory_mb = ?, walltime_s = ?, spec = ?
WHERE id = ? AND state IN ('claimed', 'running');

-- name: site_health
UPDATE sites SET health = health * ? + ? WHERE name = (SELECT site FROM attempts WHERE id = ?);

-- name: recover_leases
UPDATE attempts SET lease_expires = max(lease_expires, ?) WHERE state != 'ended';

-- name: recover_pilots
UPDATE pilots SET last_seen = max(coalesce(last_seen, 0), ?) WHERE state = 'running';

-- Firewalled sites: out-of-job staging. A site whose client declared a staging network
-- ("relay" or "none") claims only jobs that its client reported staged there.

-- name: staging_schema
CREATE TABLE IF NOT EXISTS site_networks (
    site TEXT PRIMARY KEY,
    network TEXT NOT NULL,          -- direct | relay | none
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS staged_jobs (
    site TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    staged_at REAL NOT NULL,
    PRIMARY KEY (site, job_id)
);
CREATE INDEX IF NOT EXISTS staged_jobs_job ON staged_jobs (job_id);

-- name: site_network_set
INSERT INTO site_networks (site, network, updated_at) VALUES (?, ?, ?)
ON CONFLICT (site) DO UPDATE SET network = excluded.network, updated_at = excluded.updated_at;

-- name: site_network_get
SELECT network FROM site_networks WHERE site = ?;

-- name: idle_candidates_staged
SELECT j.owner, j.id, j.cpus, j.memory_mb, j.gpus, j.disk_mb, j.walltime_s
FROM staged_jobs s JOIN jobs j ON j.id = s.job_id
WHERE s.site = ? AND j.state = 'idle' AND j.cpus <= ? AND j.memory_mb <= ? AND j.gpus <= ? AND j.disk_mb <= ?
  AND j.walltime_s <= ? AND (j.sites = '' OR instr(j.sites, ?) > 0)
ORDER BY j.priority DESC, j.cpus DESC, j.id
LIMIT ?;

-- name: staging_eligible
SELECT j.id, j.state, j.site, j.spec FROM jobs j
WHERE j.state = 'idle' AND (j.sites = '' OR instr(j.sites, ?) > 0)
  AND j.cpus <= ? AND j.memory_mb <= ? AND j.gpus <= ? AND j.disk_mb <= ? AND j.walltime_s <= ?
  AND NOT EXISTS (SELECT 1 FROM staged_jobs s WHERE s.site = ? AND s.job_id = j.id)
ORDER BY j.priority DESC, j.cpus DESC, j.id
LIMIT ?;

-- name: staging_staged
SELECT j.id, j.state, j.site, j.spec FROM staged_jobs s JOIN jobs j ON j.id = s.job_id
WHERE s.site = ?
ORDER BY j.id;

-- name: staged_insert
INSERT OR IGNORE INTO staged_jobs (site, job_id, staged_at)
SELECT ?, id, ? FROM jobs WHERE id = ? AND (sites = '' OR instr(sites, ?) > 0);

-- name: staged_delete
DELETE FROM staged_jobs WHERE site = ? AND job_id = ?;

-- name: site_may_read_file
SELECT 1 FROM jobs j
WHERE j.state IN ('idle', 'claimed', 'running') AND (j.sites = '' OR instr(j.sites, ?) > 0)
  AND instr(j.spec, ?) > 0
  AND EXISTS (SELECT 1 FROM json_each(j.spec, '$.inputs') i WHERE json_extract(i.value, '$.sha256') = ?)
LIMIT 1;

-- Jobs as users see them.

-- name: jobs_max_id
SELECT coalesce(max(id), 0) FROM jobs;

-- A submit counts its jobs into the running aggregates with one row per group, worked out from
-- its specs (glidein_server.store.added), and files their labels with one statement per label.
-- name: idle_shapes_add
INSERT INTO idle_shapes (cpus, memory_mb, gpus, disk_mb, walltime_s, sites, n) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET n = n + excluded.n;

-- name: job_counts_add
INSERT INTO job_counts (owner, state, multicore, n, cores) VALUES (?, 'idle', ?, ?, ?)
ON CONFLICT DO UPDATE SET n = n + excluded.n, cores = cores + excluded.cores;

-- name: label_counts_add
INSERT INTO label_counts (key, value, owner, state, n) VALUES (?, ?, ?, 'idle', ?)
ON CONFLICT DO UPDATE SET n = n + excluded.n;

-- name: job_labels_add
-- One label's jobs of a submitted batch: the first job's id, and the others' offsets from it (JSON).
INSERT INTO job_labels (key, value, job_id) SELECT ?1, ?2, ?3 + value FROM json_each(?4);

-- name: label_counts_of
-- The job list's counts under one label filter (?: key, value, owner or NULL twice), from the kept counts.
SELECT state, sum(n) FROM label_counts WHERE key = ? AND value = ? AND (? IS NULL OR owner = ?)
GROUP BY state HAVING sum(n) > 0;

-- name: job_counts_of
SELECT state, sum(n) FROM job_counts WHERE ? IS NULL OR owner = ? GROUP BY state HAVING sum(n) > 0;

-- name: job_get
SELECT j.id, j.owner, j.state, j.spec, j.retries_used, j.attempts, j.submitted_at, j.finished_at, j.exit_code,
       j.reason, j.site, j.result_attempt
FROM jobs j WHERE j.id = ?;

-- The job list is composed: `{where}` becomes the filters below joined by AND (or 1); `{order}` is ASC
-- or DESC. Keyset paging (job_where_after/before) starts a page past the previous page's last id.
-- name: job_page
SELECT j.id, j.owner, j.state, j.spec, j.retries_used, j.attempts, j.submitted_at, j.finished_at, j.exit_code,
       j.reason, j.site, j.result_attempt
FROM jobs j WHERE {where} ORDER BY j.id {order} LIMIT ? OFFSET ?;

-- name: job_page_labelled
-- A label-filtered page walks the first label's index in id order (the caller puts the rarest label
-- first) and looks each further label ({labels}: job_join_label blocks) up per job.
SELECT j.id, j.owner, j.state, j.spec, j.retries_used, j.attempts, j.submitted_at, j.finished_at, j.exit_code,
       j.reason, j.site, j.result_attempt
FROM job_labels l0 {labels} JOIN jobs j ON j.id = l0.job_id
WHERE l0.key = ? AND l0.value = ? AND {where} ORDER BY l0.job_id {order} LIMIT ? OFFSET ?;

-- name: job_counts_labelled
SELECT j.state, count(*) FROM job_labels l0 {labels} JOIN jobs j ON j.id = l0.job_id
WHERE l0.key = ? AND l0.value = ? AND {where} GROUP BY j.state;

-- name: job_join_label
JOIN job_labels l{n} ON l{n}.key = ? AND l{n}.value = ? AND l{n}.job_id = l0.job_id

-- name: label_total
SELECT coalesce(sum(n), 0) FROM label_counts WHERE key = ? AND value = ?;

-- name: job_counts
SELECT j.state, count(*) FROM jobs j WHERE {where} GROUP BY j.state;

-- name: job_where_owner
j.owner = ?

-- name: job_where_ids
j.id IN (SELECT value FROM json_each(?))

-- name: job_where_state
j.state = ?

-- name: job_where_after
j.id > ?

-- name: job_where_before
j.id < ?

-- name: label_where_after
l0.job_id > ?

-- name: label_where_before
l0.job_id < ?

-- name: job_state
SELECT state FROM jobs WHERE id = ?;

-- name: job_cancel
UPDATE jobs SET state = 'cancelled', finished_at = ?, reason = 'cancelled by request' WHERE id = ?;

-- name: job_has_active_attempt
SELECT 1 FROM attempts WHERE job_id = ? AND state != 'ended';

-- name: job_retry_request
UPDATE jobs SET state = 'idle', retries_used = 0, finished_at = NULL, exit_code = NULL, reason = ?,
    spec = ?, cpus = ?, memory_mb = ?, gpus = ?, walltime_s = ?, sites = ?, result_attempt = NULL
WHERE id = ?;

-- name: job_spec
SELECT state, spec FROM jobs WHERE id = ?;

-- name: job_hold
UPDATE jobs SET state = 'held', reason = ? WHERE id = ? AND state IN ('idle', 'claimed', 'running');

-- name: job_release
UPDATE jobs SET state = 'idle', reason = ? WHERE id = ? AND state = 'held';

-- name: job_event_insert
INSERT INTO job_events (job_id, at, actor, action, reason, changes) VALUES (?, ?, ?, ?, ?, ?);

-- name: job_events_of
SELECT job_id, at, actor, action, reason, changes FROM job_events
WHERE job_id IN (SELECT value FROM json_each(?)) ORDER BY job_id, id;

-- name: job_retry_budget
SELECT retries_used, max_retries, spec FROM jobs WHERE id = ?;

-- name: attempts_of_job
SELECT a.id, a.pilot_id, a.site, a.outcome, a.exit_code, a.reason, a.claimed_at, a.started_at, a.finished_at,
       a.stdout_tail, a.stderr_tail, j.cpus, a.wall_s, a.max_rss_mb, a.cpu_s, a.provenance
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.job_id = ? ORDER BY a.id;

-- name: attempt_usage
SELECT wall_s, max_rss_mb, cpu_s, provenance FROM attempts WHERE id = ?;

-- name: job_output
SELECT o.name, o.sha256, o.size FROM outputs o JOIN jobs j ON j.result_attempt = o.attempt_id
WHERE j.id = ? AND o.name = ?;

-- name: file_owner_insert
INSERT OR IGNORE INTO file_owners (sha256, owner, size) VALUES (?, ?, ?);

-- name: file_user_may_read
SELECT 1 FROM file_owners WHERE sha256 = ? AND owner = ?
UNION ALL
SELECT 1 FROM outputs o JOIN jobs j ON j.id = o.job_id WHERE o.sha256 = ? AND j.owner = ?
LIMIT 1;

-- name: file_pilot_may_read
-- Only a declared input of a job the pilot holds now; the hash appearing elsewhere in the spec
-- (argv, env) grants nothing. instr() is a cheap filter before the JSON is walked.
SELECT 1 FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.pilot_id = ? AND a.state != 'ended' AND instr(j.spec, ?) > 0
  AND EXISTS (SELECT 1 FROM json_each(j.spec, '$.inputs') i WHERE json_extract(i.value, '$.sha256') = ?)
LIMIT 1;

-- Sites.

-- name: site_shapes
SELECT name, shape FROM sites WHERE shape IS NOT NULL;

-- name: site_report
INSERT INTO sites (name, shape, last_seen) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET shape = excluded.shape, last_seen = excluded.last_seen;

-- name: site_health_all
SELECT name, health FROM sites;

-- name: site_failure_set
INSERT INTO sites (name, pilot_failure) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET pilot_failure = excluded.pilot_failure;

-- name: site_control_get
SELECT mode, max_cpus FROM sites WHERE name = ?;

-- name: site_mode_set
INSERT INTO sites (name, mode) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET mode = excluded.mode;

-- name: site_cap_set
INSERT INTO sites (name, max_cpus) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET max_cpus = excluded.max_cpus;

-- name: site_cpus_in_use
-- From the kept counts of active attempts (migration_8), not a join of every running job.
SELECT coalesce(sum(cores), 0) FROM active_jobs WHERE site = ? AND key = '';

-- name: site_pilots_alive
SELECT count(*) FROM pilots WHERE site = ? AND state IN ('pending', 'running');

-- name: site_failures
SELECT start_failures, last_failure_at FROM sites WHERE name = ?;

-- name: site_health_apply
UPDATE sites SET health = health * ? + ? WHERE name = ?;

-- Pilots.

-- name: pilot_insert
INSERT INTO pilots (site, state, created_at) VALUES (?, 'pending', ?);

-- name: pilot_state
SELECT state FROM pilots WHERE id = ?;

-- name: pilot_state_at_site
SELECT state FROM pilots WHERE id = ? AND site = ?;

-- name: pilot_site
SELECT site FROM pilots WHERE id = ?;

-- name: pilot_end
UPDATE pilots SET state = 'ended', ended_at = ?, exit_reason = coalesce(exit_reason, ?) WHERE id = ?;

-- name: pilot_register
UPDATE pilots SET state = ?, batch_id = ?, host = ?, cpus = ?, memory_mb = ?, gpus = ?, disk_mb = ?, end_time = ?,
    free_cpus = ?, free_memory_mb = ?, free_gpus = ?, free_disk_mb = ?, lifetime_s = ?, started_at = ?,
    last_seen = ?, exit_reason = ?, ended_at = CASE WHEN ? = 'ended' THEN ? END
WHERE id = ?;

-- name: pilot_shape
SELECT state, site, cpus, memory_mb, gpus, disk_mb FROM pilots WHERE id = ?;

-- name: pilot_update_shape
-- pilot_update and pilot_shape in one statement, for a sync that starts and ends no attempt.
UPDATE pilots SET free_cpus = ?, free_memory_mb = ?, free_gpus = ?, free_disk_mb = ?, lifetime_s = ?,
    last_seen = ?, occupancy = ?
WHERE id = ? AND state = 'running'
RETURNING state, site, cpus, memory_mb, gpus, disk_mb;

-- name: pilot_jobs_run
UPDATE pilots SET jobs_run = jobs_run + ? WHERE id = ?;

-- name: pilot_exit
UPDATE pilots SET occupancy = ?, exit_reason = ? WHERE id = ?;

-- name: pilots_silent
SELECT id FROM pilots WHERE state = 'running' AND last_seen < ?;

-- name: attempt_output_owner
SELECT a.job_id, j.spec FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.id = ? AND a.lease = ? AND a.pilot_id = ? AND a.state != 'ended';

-- The summary.

-- name: summary_jobs
SELECT state, sum(n) FROM job_counts GROUP BY state HAVING sum(n) > 0;

-- name: summary_jobs_of_owner
SELECT state, sum(n) FROM job_counts WHERE owner = ? GROUP BY state HAVING sum(n) > 0;

-- name: summary_pilots
SELECT state, count(*) FROM pilots GROUP BY state;

-- name: summary_occupancy
SELECT sum(occupancy * cpus * (ended_at - started_at)), sum(cpus * (ended_at - started_at))
FROM pilots WHERE state = 'ended' AND occupancy IS NOT NULL AND started_at IS NOT NULL;

-- name: summary_sites
SELECT name, shape, last_seen, start_failures, last_failure_at, mode, max_cpus, pilot_failure FROM sites ORDER BY name;

-- name: summary_site_pilots
SELECT state, count(*) FROM pilots WHERE site = ? AND state != 'ended' GROUP BY state;

-- name: summary_problems
SELECT id, site, host, exit_reason FROM pilots
WHERE ended_at > ? AND (exit_reason LIKE 'black hole%' OR exit_reason LIKE 'self-test failed%')
ORDER BY id DESC LIMIT 50;

-- name: monitoring_tables
-- Running aggregates, kept by triggers and by the submit's statements: the metrics, the job list's
-- counts and the summary never count a million rows.
CREATE TABLE IF NOT EXISTS job_counts (
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    multicore INTEGER NOT NULL,
    n INTEGER NOT NULL,
    cores INTEGER NOT NULL DEFAULT 0,  -- the cores the jobs ask for (a claim's fair share reads the busy ones)
    PRIMARY KEY (owner, state, multicore)
);
CREATE TABLE IF NOT EXISTS attempt_outcomes (
    site TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (site, outcome)
);

-- name: job_counts_migrate
-- Columns added to job_counts after its first release (migration_12 fills them in).
cores INTEGER NOT NULL DEFAULT 0

-- name: job_counts_schema
-- Kept whether or not the metrics are on; rebuilt when empty (as a database whose metrics were off left
-- it). Run after the migrations, which may drop the triggers to have them made anew here.
INSERT INTO job_counts (owner, state, multicore, n, cores) SELECT owner, state, cpus > 1, count(*), sum(cpus) FROM jobs
WHERE NOT EXISTS (SELECT 1 FROM job_counts) GROUP BY 1, 2, 3;
CREATE TRIGGER IF NOT EXISTS job_counts_update AFTER UPDATE OF state ON jobs WHEN NEW.state != OLD.state
BEGIN
    UPDATE job_counts SET n = n - 1, cores = cores - OLD.cpus
    WHERE owner = OLD.owner AND state = OLD.state AND multicore = (OLD.cpus > 1);
    INSERT INTO job_counts (owner, state, multicore, n, cores) VALUES (NEW.owner, NEW.state, NEW.cpus > 1, 1, NEW.cpus)
    ON CONFLICT DO UPDATE SET n = n + 1, cores = cores + excluded.cores;
END;
CREATE TRIGGER IF NOT EXISTS job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1, cores = cores - OLD.cpus
    WHERE owner = OLD.owner AND state = OLD.state AND multicore = (OLD.cpus > 1);
END;

-- name: monitoring_schema
INSERT INTO attempt_outcomes SELECT site, outcome, count(*) FROM attempts
WHERE state = 'ended' AND outcome IS NOT NULL AND NOT EXISTS (SELECT 1 FROM attempt_outcomes) GROUP BY 1, 2;
CREATE TRIGGER IF NOT EXISTS attempt_outcomes_end AFTER UPDATE OF state ON attempts
WHEN NEW.state = 'ended' AND OLD.state != 'ended' AND NEW.outcome IS NOT NULL
BEGIN
    INSERT INTO attempt_outcomes VALUES (NEW.site, NEW.outcome, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;

-- name: monitoring_off
-- Without metrics: no attempt outcomes kept (emptied, so that turning metrics on rebuilds them).
DROP TRIGGER IF EXISTS attempt_outcomes_end;
DELETE FROM attempt_outcomes;

-- name: monitoring_jobs
SELECT owner, state, multicore, n FROM job_counts WHERE n > 0;

-- name: monitoring_running
-- The kept counts of active attempts: per site in total (key '') and per value of the dataset label (?).
SELECT site, key, value, multicore, n, cores FROM active_jobs WHERE (key = '' OR key = ?) AND n != 0;

-- name: monitoring_pilots
SELECT site, state, count(*), sum(cpus), sum(CASE WHEN state = 'running' THEN free_cpus ELSE 0 END),
       sum(CASE WHEN state = 'running' THEN coalesce(occupancy, 0) * cpus ELSE 0 END)
FROM pilots WHERE state != 'ended' AND (state = 'pending' OR last_seen >= ?) GROUP BY 1, 2;

-- name: monitoring_sites
SELECT name, last_seen, health, start_failures, last_failure_at FROM sites ORDER BY name;

-- name: monitoring_attempts
SELECT site, outcome, n FROM attempt_outcomes WHERE n > 0;

-- name: schema_version
SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'), 1);

-- name: schema_version_set
INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: migration_2
-- Retention: finished jobs are found by age; a purged job leaves the monitoring counts; an output's
-- file is found by hash to tell whether anything still refers to it.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE state IN ('done', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS outputs_sha ON outputs (sha256);
CREATE INDEX IF NOT EXISTS outputs_job ON outputs (job_id);
CREATE TRIGGER IF NOT EXISTS job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE owner = OLD.owner AND state = OLD.state AND multicore = (OLD.cpus > 1);
END;

-- name: migration_3
-- Claims read each fitting shape's best idle jobs (jobs_idle_shape) instead of scanning the idle
-- jobs in claim order, which walked past every job too big for the pilot.
DROP INDEX IF EXISTS jobs_idle;
DROP INDEX IF EXISTS jobs_idle_owner;
CREATE INDEX IF NOT EXISTS jobs_idle_shape
ON jobs (owner, cpus, memory_mb, gpus, disk_mb, walltime_s, sites, priority DESC, id) WHERE state = 'idle';

-- name: migration_4
-- A job's history: holds, releases and retries by request, who did them, why, and what they changed.
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,           -- held | released | retried
    reason TEXT,
    changes TEXT                    -- JSON: [{"field", "old", "new"}] of a retry's new requirements
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);

-- name: migration_5
-- A submit counts its jobs into the idle shapes and job counts with one statement, not a trigger
-- per job; labels get a table of their own, indexed for the job list's label filter.
DROP TRIGGER IF EXISTS jobs_idle_insert;
DROP TRIGGER IF EXISTS job_counts_insert;
CREATE TABLE IF NOT EXISTS job_labels (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    PRIMARY KEY (key, value, job_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO job_labels SELECT l.key, l.value, j.id FROM jobs j, json_each(j.spec, '$.labels') l;

-- name: migration_6
-- Bounded reservations: a pilot holding its free cores for a multicore job that waits too long (one
-- job per pilot, one pilot per job), and the idle multicore jobs by shape, to find those that wait.
CREATE TABLE IF NOT EXISTS reservations (
    pilot_id INTEGER PRIMARY KEY,
    job_id INTEGER UNIQUE,          -- NULL: the pilot's hold ran out and it rests until rest_until
    since REAL NOT NULL,
    rest_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_idle_multicore
ON jobs (cpus, memory_mb, gpus, disk_mb, walltime_s, sites, priority DESC, id) WHERE state = 'idle' AND cpus > 1;

-- name: migration_7
-- Job counts by label, owner and state, kept as jobs are added, change state and are purged, so the
-- job list's counts under a label filter never count the matching jobs (20,000 of a million for one
-- dataset took 150 ms).
CREATE TABLE IF NOT EXISTS label_counts (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (key, value, owner, state)
) WITHOUT ROWID;
INSERT OR IGNORE INTO label_counts
SELECT l.key, l.value, j.owner, j.state, count(*) FROM job_labels l JOIN jobs j ON j.id = l.job_id GROUP BY 1, 2, 3, 4;
CREATE TRIGGER IF NOT EXISTS label_counts_update AFTER UPDATE OF state ON jobs WHEN NEW.state != OLD.state
BEGIN
    UPDATE label_counts SET n = n - 1
    WHERE owner = OLD.owner AND state = OLD.state AND (key, value) IN (SELECT key, value FROM json_each(OLD.spec, '$.labels'));
    INSERT INTO label_counts (key, value, owner, state, n)
    SELECT key, value, NEW.owner, NEW.state, 1 FROM json_each(NEW.spec, '$.labels') WHERE true
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS label_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE label_counts SET n = n - 1
    WHERE owner = OLD.owner AND state = OLD.state AND (key, value) IN (SELECT key, value FROM json_each(OLD.spec, '$.labels'));
END;

-- name: migration_8
-- The jobs running at each site (active attempts) and their cores, kept as attempts begin and end,
-- in total (key '') and per label of the job: the summary's cores in use and the metrics' running
-- jobs per dataset never join every running attempt to its job (50,000 of them took 300 ms).
CREATE TABLE IF NOT EXISTS active_jobs (
    site TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    multicore INTEGER NOT NULL,
    n INTEGER NOT NULL,
    cores INTEGER NOT NULL,
    PRIMARY KEY (site, key, value, multicore)
) WITHOUT ROWID;
DELETE FROM active_jobs;  -- counted afresh from the attempts
INSERT INTO active_jobs
SELECT a.site, '', '', j.cpus > 1, count(*), sum(j.cpus) FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.state != 'ended' GROUP BY 1, 4;
INSERT INTO active_jobs
SELECT a.site, l.key, l.value, j.cpus > 1, count(*), sum(j.cpus)
FROM attempts a JOIN jobs j ON j.id = a.job_id, json_each(j.spec, '$.labels') l
WHERE a.state != 'ended' GROUP BY 1, 2, 3, 4;
CREATE TRIGGER IF NOT EXISTS active_jobs_begin AFTER INSERT ON attempts WHEN NEW.state != 'ended'
BEGIN
    INSERT INTO active_jobs (site, key, value, multicore, n, cores)
    SELECT NEW.site, '', '', cpus > 1, 1, cpus FROM jobs WHERE id = NEW.job_id
    ON CONFLICT DO UPDATE SET n = n + 1, cores = cores + excluded.cores;
    INSERT INTO active_jobs (site, key, value, multicore, n, cores)
    SELECT NEW.site, l.key, l.value, j.cpus > 1, 1, j.cpus FROM jobs j, json_each(j.spec, '$.labels') l
    WHERE j.id = NEW.job_id
    ON CONFLICT DO UPDATE SET n = n + 1, cores = cores + excluded.cores;
END;
CREATE TRIGGER IF NOT EXISTS active_jobs_end AFTER UPDATE OF state ON attempts
WHEN OLD.state != 'ended' AND NEW.state = 'ended'
BEGIN
    INSERT INTO active_jobs (site, key, value, multicore, n, cores)
    SELECT OLD.site, '', '', cpus > 1, -1, -cpus FROM jobs WHERE id = OLD.job_id
    ON CONFLICT DO UPDATE SET n = n + excluded.n, cores = cores + excluded.cores;
    INSERT INTO active_jobs (site, key, value, multicore, n, cores)
    SELECT OLD.site, l.key, l.value, j.cpus > 1, -1, -j.cpus FROM jobs j, json_each(j.spec, '$.labels') l
    WHERE j.id = OLD.job_id
    ON CONFLICT DO UPDATE SET n = n + excluded.n, cores = cores + excluded.cores;
END;
CREATE TRIGGER IF NOT EXISTS active_jobs_delete AFTER DELETE ON attempts WHEN OLD.state != 'ended'
BEGIN
    INSERT INTO active_jobs (site, key, value, multicore, n, cores)
    SELECT OLD.site, '', '', cpus > 1, -1, -cpus FROM jobs WHERE id = OLD.job_id
    ON CONFLICT DO UPDATE SET n = n + excluded.n, cores = cores + excluded.cores;
    INSERT INTO active_jobs (site, key, value, multicore, n, cores)
    SELECT OLD.site, l.key, l.value, j.cpus > 1, -1, -j.cpus FROM jobs j, json_each(j.spec, '$.labels') l
    WHERE j.id = OLD.job_id
    ON CONFLICT DO UPDATE SET n = n + excluded.n, cores = cores + excluded.cores;
END;

-- name: migration_9
-- Finished jobs are found by age through the jobs that have a finish time (only a final state sets
-- one; a retry clears it). The index's former condition, a state among three, made SQLite build a
-- lookup table of the three for every job inserted: 4 µs of a submitted job's cost, for an index
-- no new job enters.
DROP INDEX IF EXISTS jobs_finished;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- name: migration_10
-- The jobs in each state but idle, in id order, for the job list's state filter. The index of every
-- job's state it replaces took each submitted job in (3 µs of its 19 in the store) although the
-- queue of idle jobs is listed in id order without it and claims read jobs_idle_shape. SQLite uses
-- it only for a query that names its condition (job_where_state_not_idle).
DROP INDEX IF EXISTS jobs_state;
CREATE INDEX IF NOT EXISTS jobs_not_idle ON jobs (state) WHERE state != 'idle';

-- name: migration_11
-- The index of every job's state again, in place of migration 10's: it lists the idle jobs in id
-- order (a state and its rowids), which a queue of many finished jobs and few idle ones needs for
-- `glidein wait` and `glidein status` (without it SQLite walks every finished job to the first idle
-- one), as do a firewalled site's reads of inputs and the staging's pick of jobs.
DROP INDEX IF EXISTS jobs_not_idle;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);

-- name: migration_12
-- The cores of each user's jobs in each state, kept with their counts: a claim's fair share reads each
-- user's cores in use from them instead of summing every running job (3.8 ms a claim at 50,000
-- running jobs). The counts are worked out afresh and the triggers dropped, to be made anew with the
-- cores (job_counts_schema, after the migrations); the index of the busy jobs by user, which the sums
-- read, goes (a claimed job no longer enters it).
DROP INDEX IF EXISTS jobs_busy_owner;
DROP TRIGGER IF EXISTS job_counts_update;
DROP TRIGGER IF EXISTS job_counts_delete;
DELETE FROM job_counts;
INSERT INTO job_counts (owner, state, multicore, n, cores) SELECT owner, state, cpus > 1, count(*), sum(cpus) FROM jobs
GROUP BY 1, 2, 3;

-- Retention: finished jobs older than a cutoff leave with their attempts and outputs, in batches.

-- name: purge_pick
-- The oldest finished jobs in the order of jobs_finished (migration_9), never a sort of them all.
SELECT id FROM jobs INDEXED BY jobs_finished
WHERE finished_at IS NOT NULL AND finished_at < ? AND state IN ('done', 'failed', 'cancelled')
ORDER BY finished_at LIMIT ?;

-- name: purge_outputs
DELETE FROM outputs WHERE job_id IN (SELECT value FROM json_each(?)) RETURNING sha256;

-- name: purge_attempts
DELETE FROM attempts WHERE job_id IN (SELECT value FROM json_each(?));

-- name: purge_staged
DELETE FROM staged_jobs WHERE job_id IN (SELECT value FROM json_each(?));

-- name: purge_events
DELETE FROM job_events WHERE job_id IN (SELECT value FROM json_each(?));

-- name: purge_labels
DELETE FROM job_labels WHERE (key, value, job_id) IN (
    SELECT l.key, l.value, j.id FROM jobs j, json_each(j.spec, '$.labels') l
    WHERE j.id IN (SELECT value FROM json_each(?)) AND j.state IN ('done', 'failed', 'cancelled')
);

-- name: purge_jobs
DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('done', 'failed', 'cancelled');

-- name: file_referenced
SELECT EXISTS (SELECT 1 FROM outputs WHERE sha256 = ?) OR EXISTS (SELECT 1 FROM file_owners WHERE sha256 = ?);

-- name: dataset_states
SELECT coalesce(json_extract(spec, '$.labels.' || json_quote(?)), ''), state, count(*),
       sum(CASE WHEN state = 'running' THEN cpus ELSE 0 END)
FROM jobs GROUP BY 1, 2;

-- name: dataset_efficiency
SELECT coalesce(json_extract(j.spec, '$.labels.' || json_quote(?)), ''), sum(a.cpu_s), sum(a.wall_s * j.cpus)
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.state = 'ended' AND a.cpu_s IS NOT NULL AND a.wall_s > 0 GROUP BY 1;
