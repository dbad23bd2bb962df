-- SQL of the PostgreSQL store, in named blocks (`-- name: NAME`), loaded by glidein_server.store.sqlfile.
-- Blocks named migration_N upgrade the schema from version N-1 to N, each in one transaction.

-- name: migration_1
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,          -- sha256 of the token; the token itself is never stored
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked BOOLEAN NOT NULL DEFAULT false,
    id TEXT NOT NULL UNIQUE,        -- public id: the first 16 hex digits of the hash
    scopes TEXT NOT NULL DEFAULT '',
    revoked_at DOUBLE PRECISION
);
CREATE INDEX tokens_subject ON tokens (role, subject);
CREATE TABLE totp (
    subject TEXT PRIMARY KEY,
    secret BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_step BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE sites (
    name TEXT PRIMARY KEY,
    shape TEXT,
    last_seen DOUBLE PRECISION,
    start_failures INTEGER NOT NULL DEFAULT 0,
    last_failure_at DOUBLE PRECISION,
    health DOUBLE PRECISION NOT NULL DEFAULT 1.0
);
CREATE TABLE jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    spec JSONB NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mb BIGINT NOT NULL,
    gpus INTEGER NOT NULL,
    disk_mb BIGINT NOT NULL,
    walltime_s BIGINT NOT NULL,
    sites TEXT NOT NULL,            -- '' = any site, else ',a,b,'
    priority INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    retries_used INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    exit_code INTEGER,
    reason TEXT,
    site TEXT,
    result_attempt BIGINT
);
CREATE INDEX jobs_idle ON jobs (priority DESC, cpus DESC, id) WHERE state = 'idle';
CREATE INDEX jobs_owner ON jobs (owner, id);
CREATE INDEX jobs_state ON jobs (state);
CREATE TABLE attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id BIGINT NOT NULL,
    pilot_id BIGINT NOT NULL,
    site TEXT NOT NULL,
    lease TEXT NOT NULL,
    state TEXT NOT NULL,            -- claimed | running | ended
    outcome TEXT,
    exit_code INTEGER,
    reason TEXT,
    claimed_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    lease_expires DOUBLE PRECISION NOT NULL,
    wall_s DOUBLE PRECISION,
    max_rss_mb DOUBLE PRECISION,
    stdout_tail TEXT NOT NULL DEFAULT '',
    stderr_tail TEXT NOT NULL DEFAULT '',
    cpu_s DOUBLE PRECISION,
    provenance BYTEA                -- msgspec-encoded Provenance, as the pilot reported it
);
CREATE INDEX attempts_running ON attempts (site) WHERE state = 'running';
CREATE INDEX attempts_job ON attempts (job_id);
CREATE INDEX attempts_pilot_active ON attempts (pilot_id) WHERE state != 'ended';
CREATE INDEX attempts_lease ON attempts (lease_expires) WHERE state != 'ended';
CREATE TABLE outputs (
    attempt_id BIGINT NOT NULL,
    job_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (attempt_id, name)
);
CREATE INDEX outputs_sha ON outputs (sha256);
CREATE TABLE file_owners (
    sha256 TEXT NOT NULL,
    owner TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (sha256, owner)
);
CREATE TABLE pilots (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | running | ended
    batch_id TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '',
    cpus INTEGER NOT NULL DEFAULT 0,
    memory_mb BIGINT NOT NULL DEFAULT 0,
    gpus INTEGER NOT NULL DEFAULT 0,
    disk_mb BIGINT NOT NULL DEFAULT 0,
    end_time DOUBLE PRECISION,
    free_cpus INTEGER NOT NULL DEFAULT 0,
    free_memory_mb BIGINT NOT NULL DEFAULT 0,
    free_gpus INTEGER NOT NULL DEFAULT 0,
    free_disk_mb BIGINT NOT NULL DEFAULT 0,
    lifetime_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    last_seen DOUBLE PRECISION,
    ended_at DOUBLE PRECISION,
    occupancy DOUBLE PRECISION,
    jobs_run INTEGER NOT NULL DEFAULT 0,
    exit_reason TEXT
);
CREATE INDEX pilots_live ON pilots (site) WHERE state != 'ended';
CREATE TABLE site_networks (
    site TEXT PRIMARY KEY,
    network TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE staged_jobs (
    site TEXT NOT NULL,
    job_id BIGINT NOT NULL,
    staged_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (site, job_id)
);
CREATE INDEX staged_jobs_job ON staged_jobs (job_id);
-- Idle jobs by shape, kept as deltas appended by a statement trigger (no row every claim fights
-- over); the demand sums them, and compaction folds them into one row per shape now and then.
CREATE TABLE idle_shape_deltas (
    cpus INTEGER NOT NULL,
    memory_mb BIGINT NOT NULL,
    gpus INTEGER NOT NULL,
    disk_mb BIGINT NOT NULL,
    walltime_s BIGINT NOT NULL,
    sites TEXT NOT NULL,
    n BIGINT NOT NULL
);
-- Job counts by owner, state and multicore, and attempt outcomes by site, for the metrics: kept the
-- same way, as deltas, so a scrape never counts a million rows.
CREATE TABLE job_count_deltas (owner TEXT NOT NULL, state TEXT NOT NULL, multicore BOOLEAN NOT NULL, n BIGINT NOT NULL);
CREATE TABLE attempt_outcome_deltas (site TEXT NOT NULL, outcome TEXT NOT NULL, n BIGINT NOT NULL);
CREATE FUNCTION glidein_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idle_shape_deltas
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, count(*) FROM new_rows WHERE state = 'idle'
    GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites;
    IF FOUND THEN PERFORM pg_notify('glidein_work', ''); END IF;
    INSERT INTO job_count_deltas SELECT owner, state, cpus > 1, count(*) FROM new_rows GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;
CREATE FUNCTION glidein_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE entered BIGINT;
BEGIN
    INSERT INTO idle_shape_deltas
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, sum(d) FROM (
        SELECT n.cpus, n.memory_mb, n.gpus, n.disk_mb, n.walltime_s, n.sites, 1 AS d
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.state = 'idle' AND o.state != 'idle'
        UNION ALL
        SELECT o.cpus, o.memory_mb, o.gpus, o.disk_mb, o.walltime_s, o.sites, -1
        FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.state = 'idle' AND n.state != 'idle'
    ) x GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(d) != 0;
    SELECT count(*) INTO entered FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.state = 'idle' AND o.state != 'idle';
    IF entered > 0 THEN PERFORM pg_notify('glidein_work', ''); END IF;
    INSERT INTO job_count_deltas
    SELECT owner, state, multicore, sum(d) FROM (
        SELECT n.owner, n.state, n.cpus > 1 AS multicore, 1 AS d
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.state != o.state
        UNION ALL
        SELECT o.owner, o.state, o.cpus > 1, -1
        FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE n.state != o.state
    ) x GROUP BY 1, 2, 3 HAVING sum(d) != 0;
    RETURN NULL;
END $$;
CREATE FUNCTION glidein_attempts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO attempt_outcome_deltas
    SELECT n.site, n.outcome, count(*) FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.state = 'ended' AND o.state != 'ended' AND n.outcome IS NOT NULL GROUP BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION glidein_jobs_inserted();
CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION glidein_jobs_updated();
CREATE TRIGGER attempts_updated AFTER UPDATE ON attempts REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION glidein_attempts_updated();

-- name: migration_2
-- Fair share: each user's idle jobs in that user's own order, and the cores each user holds.
CREATE INDEX jobs_idle_owner ON jobs (owner, priority DESC, cpus DESC, id) WHERE state = 'idle';
CREATE INDEX jobs_busy_owner ON jobs (owner, cpus) WHERE state IN ('claimed', 'running');

-- name: migration_4
-- The operator's hand on a site (drain, pause, cap) and why its last failed pilot failed.
ALTER TABLE sites ADD COLUMN IF NOT EXISTS mode TEXT NOT NULL DEFAULT 'open';
ALTER TABLE sites ADD COLUMN IF NOT EXISTS max_cpus INTEGER;
ALTER TABLE sites ADD COLUMN IF NOT EXISTS pilot_failure TEXT;

-- name: migration_5
-- The number of the pilot's sync whose answer carried a claim: only a later sync can lose it.
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS claim_seq BIGINT;

-- name: migration_6
-- Claims read each fitting shape's best idle jobs (jobs_idle_shape) instead of scanning the idle
-- jobs in claim order, which walked past every job too big for the pilot.
DROP INDEX IF EXISTS jobs_idle;
DROP INDEX IF EXISTS jobs_idle_owner;
CREATE INDEX IF NOT EXISTS jobs_idle_shape
ON jobs (owner, cpus, memory_mb, gpus, disk_mb, walltime_s, sites, priority DESC, id) WHERE state = 'idle';

-- name: migration_7
-- A job's history: holds, releases and retries by request, who did them, why, and what they changed.
CREATE TABLE job_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,           -- held | released | retried
    reason TEXT,
    changes TEXT                    -- JSON: [{"field", "old", "new"}] of a retry's new requirements
);
CREATE INDEX job_events_job ON job_events (job_id, id);

-- name: migration_8
-- The job list's label filter: a job's labels contain the wanted ones, found through this index.
CREATE INDEX IF NOT EXISTS jobs_labels ON jobs USING gin ((spec -> 'labels') jsonb_path_ops);

-- name: migration_9
-- Bounded reservations: a pilot holding its free cores for a multicore job that waits too long (one
-- job per pilot, one pilot per job: the unique index stops two replicas reserving one job twice), and
-- the idle multicore jobs by shape, to find those that wait.
CREATE TABLE IF NOT EXISTS reservations (
    pilot_id BIGINT PRIMARY KEY,
    job_id BIGINT UNIQUE,           -- NULL: the pilot's hold ran out and it rests until rest_until
    since DOUBLE PRECISION NOT NULL,
    rest_until DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_idle_multicore
ON jobs (cpus, memory_mb, gpus, disk_mb, walltime_s, sites, priority DESC, id) WHERE state = 'idle' AND cpus > 1;

-- name: migration_10
-- Job counts by label, owner and state, kept as deltas like the job counts, so the job list's counts
-- under a label filter never count the matching jobs (20,000 of a million for one dataset).
CREATE TABLE IF NOT EXISTS label_count_deltas (
    key TEXT NOT NULL, value TEXT NOT NULL, owner TEXT NOT NULL, state TEXT NOT NULL, n BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS label_count_deltas_label ON label_count_deltas (key, value);
INSERT INTO label_count_deltas
SELECT l.key, l.value, j.owner, j.state, count(*) FROM jobs j, jsonb_each_text(j.spec -> 'labels') l
GROUP BY 1, 2, 3, 4;
CREATE OR REPLACE FUNCTION glidein_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idle_shape_deltas
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, count(*) FROM new_rows WHERE state = 'idle'
    GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites;
    IF FOUND THEN PERFORM pg_notify('glidein_work', ''); END IF;
    INSERT INTO job_count_deltas SELECT owner, state, cpus > 1, count(*) FROM new_rows GROUP BY 1, 2, 3;
    INSERT INTO label_count_deltas
    SELECT l.key, l.value, r.owner, r.state, count(*) FROM new_rows r, jsonb_each_text(r.spec -> 'labels') l
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION glidein_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE entered BIGINT;
BEGIN
    INSERT INTO idle_shape_deltas
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, sum(d) FROM (
        SELECT n.cpus, n.memory_mb, n.gpus, n.disk_mb, n.walltime_s, n.sites, 1 AS d
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.state = 'idle' AND o.state != 'idle'
        UNION ALL
        SELECT o.cpus, o.memory_mb, o.gpus, o.disk_mb, o.walltime_s, o.sites, -1
        FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.state = 'idle' AND n.state != 'idle'
    ) x GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(d) != 0;
    SELECT count(*) INTO entered FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.state = 'idle' AND o.state != 'idle';
    IF entered > 0 THEN PERFORM pg_notify('glidein_work', ''); END IF;
    INSERT INTO job_count_deltas
    SELECT owner, state, multicore, sum(d) FROM (
        SELECT n.owner, n.state, n.cpus > 1 AS multicore, 1 AS d
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.state != o.state
        UNION ALL
        SELECT o.owner, o.state, o.cpus > 1, -1
        FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE n.state != o.state
    ) x GROUP BY 1, 2, 3 HAVING sum(d) != 0;
    INSERT INTO label_count_deltas
    SELECT l.key, l.value, x.owner, x.state, sum(x.d) FROM (
        SELECT n.owner, n.state, n.spec -> 'labels' AS labels, 1 AS d
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.state != o.state
        UNION ALL
        SELECT o.owner, o.state, o.spec -> 'labels', -1
        FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE n.state != o.state
    ) x, jsonb_each_text(x.labels) l GROUP BY 1, 2, 3, 4 HAVING sum(x.d) != 0;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION glidein_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas SELECT owner, state, cpus > 1, -count(*) FROM old_rows GROUP BY 1, 2, 3;
    INSERT INTO label_count_deltas
    SELECT l.key, l.value, r.owner, r.state, -count(*) FROM old_rows r, jsonb_each_text(r.spec -> 'labels') l
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

-- name: migration_11
-- Each replica keeps the tokens it found valid in memory: any change to a token (a revocation, a
-- renewal, a purge, by whichever replica or command) tells every replica which one to forget.
CREATE OR REPLACE FUNCTION glidein_token_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('glidein_tokens', OLD.id);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS tokens_changed ON tokens;
CREATE TRIGGER tokens_changed AFTER UPDATE OR DELETE ON tokens
FOR EACH ROW EXECUTE FUNCTION glidein_token_changed();

-- name: migration_12
-- A submit counts its own jobs into the deltas (job_ids, jobs_added) and says so for its transaction;
-- the insert trigger counts any other insert, as from a replica of an earlier release during an upgrade.
CREATE OR REPLACE FUNCTION glidein_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('glidein.counted', true) = 'on' THEN RETURN NULL; END IF;
    INSERT INTO idle_shape_deltas
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, count(*) FROM new_rows WHERE state = 'idle'
    GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites;
    IF FOUND THEN PERFORM pg_notify('glidein_work', ''); END IF;
    INSERT INTO job_count_deltas SELECT owner, state, cpus > 1, count(*) FROM new_rows GROUP BY 1, 2, 3;
    INSERT INTO label_count_deltas
    SELECT l.key, l.value, r.owner, r.state, count(*) FROM new_rows r, jsonb_each_text(r.spec -> 'labels') l
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

-- name: migration_13
-- The jobs running at each site (active attempts) and their cores, kept as deltas like the job counts
-- as attempts begin and end, in total (key '') and per label of the job: the summary's cores in use
-- and the metrics' running jobs per dataset never join every running attempt to its job.
CREATE TABLE IF NOT EXISTS active_job_deltas (
    site TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, multicore BOOLEAN NOT NULL,
    n BIGINT NOT NULL, cores BIGINT NOT NULL
);
DELETE FROM active_job_deltas;  -- counted afresh from the attempts, however far an earlier run got
INSERT INTO active_job_deltas
SELECT a.site, l.key, l.value, j.cpus > 1, count(*), sum(j.cpus)
FROM attempts a JOIN jobs j ON j.id = a.job_id,
     LATERAL (SELECT '' AS key, '' AS value UNION ALL SELECT * FROM jsonb_each_text(j.spec -> 'labels')) l
WHERE a.state != 'ended' GROUP BY 1, 2, 3, 4;
CREATE OR REPLACE FUNCTION glidein_attempts_began() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO active_job_deltas
    SELECT a.site, l.key, l.value, j.cpus > 1, count(*), sum(j.cpus)
    FROM new_rows a JOIN jobs j ON j.id = a.job_id,
         LATERAL (SELECT '' AS key, '' AS value UNION ALL SELECT * FROM jsonb_each_text(j.spec -> 'labels')) l
    WHERE a.state != 'ended' GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS attempts_began ON attempts;
CREATE TRIGGER attempts_began AFTER INSERT ON attempts REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION glidein_attempts_began();
CREATE OR REPLACE FUNCTION glidein_attempts_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state = 'ended') THEN  -- a lease renewed, a start
        RETURN NULL;
    END IF;
    INSERT INTO active_job_deltas
    SELECT a.site, l.key, l.value, j.cpus > 1, -count(*), -sum(j.cpus)
    FROM old_rows a JOIN new_rows n ON n.id = a.id JOIN jobs j ON j.id = a.job_id,
         LATERAL (SELECT '' AS key, '' AS value UNION ALL SELECT * FROM jsonb_each_text(j.spec -> 'labels')) l
    WHERE a.state != 'ended' AND n.state = 'ended' GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS attempts_ended ON attempts;
CREATE TRIGGER attempts_ended AFTER UPDATE ON attempts REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION glidein_attempts_ended();
CREATE OR REPLACE FUNCTION glidein_attempts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO active_job_deltas
    SELECT a.site, l.key, l.value, j.cpus > 1, -count(*), -sum(j.cpus)
    FROM old_rows a JOIN jobs j ON j.id = a.job_id,
         LATERAL (SELECT '' AS key, '' AS value UNION ALL SELECT * FROM jsonb_each_text(j.spec -> 'labels')) l
    WHERE a.state != 'ended' GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS attempts_deleted ON attempts;
CREATE TRIGGER attempts_deleted AFTER DELETE ON attempts REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION glidein_attempts_deleted();

-- name: migration_14
-- Cheaper counting on the pilots' path. A job's change of state is counted into the kept deltas by
-- one statement that joins the transition tables once (it was four statements, seven joins); an
-- attempt that ends is counted by a row trigger whose WHEN clause PostgreSQL tests without calling
-- anything, so a heartbeat's lease renewal or a start no longer runs two statement triggers.
CREATE OR REPLACE FUNCTION glidein_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE entered BIGINT;
BEGIN
    WITH ch AS MATERIALIZED (
        SELECT o.owner AS o_owner, o.state AS o_state, o.cpus AS o_cpus, o.memory_mb AS o_memory_mb,
               o.gpus AS o_gpus, o.disk_mb AS o_disk_mb, o.walltime_s AS o_walltime_s, o.sites AS o_sites,
               o.spec -> 'labels' AS o_labels,
               n.owner AS n_owner, n.state AS n_state, n.cpus AS n_cpus, n.memory_mb AS n_memory_mb,
               n.gpus AS n_gpus, n.disk_mb AS n_disk_mb, n.walltime_s AS n_walltime_s, n.sites AS n_sites,
               n.spec -> 'labels' AS n_labels
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.state != o.state
    ), shapes AS (
        INSERT INTO idle_shape_deltas
        SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, sum(d) FROM (
            SELECT n_cpus, n_memory_mb, n_gpus, n_disk_mb, n_walltime_s, n_sites, 1 FROM ch WHERE n_state = 'idle'
            UNION ALL
            SELECT o_cpus, o_memory_mb, o_gpus, o_disk_mb, o_walltime_s, o_sites, -1 FROM ch WHERE o_state = 'idle'
        ) x (cpus, memory_mb, gpus, disk_mb, walltime_s, sites, d)
        GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(d) != 0
    ), counts AS (
        INSERT INTO job_count_deltas
        SELECT owner, state, multicore, sum(d) FROM (
            SELECT n_owner, n_state, n_cpus > 1, 1 FROM ch
            UNION ALL
            SELECT o_owner, o_state, o_cpus > 1, -1 FROM ch
        ) x (owner, state, multicore, d) GROUP BY 1, 2, 3 HAVING sum(d) != 0
    ), labels AS (
        INSERT INTO label_count_deltas
        SELECT l.key, l.value, x.owner, x.state, sum(x.d) FROM (
            SELECT n_owner, n_state, n_labels, 1 FROM ch
            UNION ALL
            SELECT o_owner, o_state, o_labels, -1 FROM ch
        ) x (owner, state, labels, d), jsonb_each_text(x.labels) l GROUP BY 1, 2, 3, 4 HAVING sum(x.d) != 0
    )
    SELECT count(*) INTO entered FROM ch WHERE n_state = 'idle';
    IF entered > 0 THEN PERFORM pg_notify('glidein_work', ''); END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION glidein_attempt_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.outcome IS NOT NULL THEN
        INSERT INTO attempt_outcome_deltas (site, outcome, n) VALUES (NEW.site, NEW.outcome, 1);
    END IF;
    INSERT INTO active_job_deltas
    SELECT OLD.site, l.key, l.value, j.cpus > 1, -1, -j.cpus
    FROM jobs j, LATERAL (SELECT '' AS key, '' AS value UNION ALL SELECT * FROM jsonb_each_text(j.spec -> 'labels')) l
    WHERE j.id = OLD.job_id;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS attempts_updated ON attempts;
DROP TRIGGER IF EXISTS attempts_ended ON attempts;
DROP FUNCTION IF EXISTS glidein_attempts_updated();
DROP FUNCTION IF EXISTS glidein_attempts_ended();
DROP TRIGGER IF EXISTS attempt_ended ON attempts;
CREATE TRIGGER attempt_ended AFTER UPDATE ON attempts FOR EACH ROW
WHEN (OLD.state <> 'ended' AND NEW.state = 'ended') EXECUTE FUNCTION glidein_attempt_ended();

-- name: migration_15
-- The jobs in each state but idle, in id order, for the job list's state filter. The index of every
-- job's state it replaces took each submitted job in (2-3 µs of PostgreSQL's CPU per job) although
-- the queue of idle jobs is listed in id order without it and claims read jobs_idle_shape. The
-- planner proves a query may use it only from the condition itself (job_where_state_not_idle).
DROP INDEX IF EXISTS jobs_state;
CREATE INDEX IF NOT EXISTS jobs_not_idle ON jobs (state, id) WHERE state <> 'idle';

-- name: migration_16
-- jobs_idle_shape keyed by one 64-bit hash of the shape instead of its six columns: each submitted job
-- costs PostgreSQL 2-2.6 µs less CPU (a fifth of what its inserts cost at 1M idle jobs) and the index
-- is smaller, while a claim still seeks each (user, shape) directly. A claim compares the columns
-- too, so two shapes sharing a hash never mix.
CREATE OR REPLACE FUNCTION glidein_shape_key(
    cpus INTEGER, memory_mb BIGINT, gpus INTEGER, disk_mb BIGINT, walltime_s BIGINT, sites TEXT
) RETURNS BIGINT LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT hashtextextended(sites, hashint8extended(walltime_s, hashint8extended(disk_mb,
       hashint4extended(gpus, hashint8extended(memory_mb, hashint4extended(cpus, 0))))))
$$;
DROP INDEX IF EXISTS jobs_idle_shape;
CREATE INDEX IF NOT EXISTS jobs_idle_shape
ON jobs (owner, glidein_shape_key(cpus, memory_mb, gpus, disk_mb, walltime_s, sites), priority DESC, id)
WHERE state = 'idle';

-- name: migration_17
-- The cores of each user's jobs in each state, kept in the deltas with their counts: a claim's fair
-- share reads each user's cores in use from them instead of summing every running job (8.4 ms a
-- claim at 50,000 running jobs). The rows kept so far count no cores; one row per group adds them.
-- The index of the busy jobs by user, which the sums read, goes (a claimed job no longer enters it).
DROP INDEX IF EXISTS jobs_busy_owner;
ALTER TABLE job_count_deltas ADD COLUMN IF NOT EXISTS cores BIGINT NOT NULL DEFAULT 0;
INSERT INTO job_count_deltas (owner, state, multicore, n, cores)
SELECT owner, state, cpus > 1, 0, sum(cpus) FROM jobs GROUP BY 1, 2, 3;
CREATE OR REPLACE FUNCTION glidein_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('glidein.counted', true) = 'on' THEN RETURN NULL; END IF;
    INSERT INTO idle_shape_deltas
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, count(*) FROM new_rows WHERE state = 'idle'
    GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites;
    IF FOUND THEN PERFORM pg_notify('glidein_work', ''); END IF;
    INSERT INTO job_count_deltas SELECT owner, state, cpus > 1, count(*), sum(cpus) FROM new_rows GROUP BY 1, 2, 3;
    INSERT INTO label_count_deltas
    SELECT l.key, l.value, r.owner, r.state, count(*) FROM new_rows r, jsonb_each_text(r.spec -> 'labels') l
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION glidein_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas SELECT owner, state, cpus > 1, -count(*), -sum(cpus) FROM old_rows GROUP BY 1, 2, 3;
    INSERT INTO label_count_deltas
    SELECT l.key, l.value, r.owner, r.state, -count(*) FROM old_rows r, jsonb_each_text(r.spec -> 'labels') l
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION glidein_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE entered BIGINT;
BEGIN
    WITH ch AS MATERIALIZED (
        SELECT o.owner AS o_owner, o.state AS o_state, o.cpus AS o_cpus, o.memory_mb AS o_memory_mb,
               o.gpus AS o_gpus, o.disk_mb AS o_disk_mb, o.walltime_s AS o_walltime_s, o.sites AS o_sites,
               o.spec -> 'labels' AS o_labels,
               n.owner AS n_owner, n.state AS n_state, n.cpus AS n_cpus, n.memory_mb AS n_memory_mb,
               n.gpus AS n_gpus, n.disk_mb AS n_disk_mb, n.walltime_s AS n_walltime_s, n.sites AS n_sites,
               n.spec -> 'labels' AS n_labels
        FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.state != o.state
    ), shapes AS (
        INSERT INTO idle_shape_deltas
        SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, sum(d) FROM (
            SELECT n_cpus, n_memory_mb, n_gpus, n_disk_mb, n_walltime_s, n_sites, 1 FROM ch WHERE n_state = 'idle'
            UNION ALL
            SELECT o_cpus, o_memory_mb, o_gpus, o_disk_mb, o_walltime_s, o_sites, -1 FROM ch WHERE o_state = 'idle'
        ) x (cpus, memory_mb, gpus, disk_mb, walltime_s, sites, d)
        GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(d) != 0
    ), counts AS (
        INSERT INTO job_count_deltas
        SELECT owner, state, multicore, sum(d), sum(c) FROM (
            SELECT n_owner, n_state, n_cpus > 1, 1, n_cpus FROM ch
            UNION ALL
            SELECT o_owner, o_state, o_cpus > 1, -1, -o_cpus FROM ch
        ) x (owner, state, multicore, d, c) GROUP BY 1, 2, 3 HAVING sum(d) != 0 OR sum(c) != 0
    ), labels AS (
        INSERT INTO label_count_deltas
        SELECT l.key, l.value, x.owner, x.state, sum(x.d) FROM (
            SELECT n_owner, n_state, n_labels, 1 FROM ch
            UNION ALL
            SELECT o_owner, o_state, o_labels, -1 FROM ch
        ) x (owner, state, labels, d), jsonb_each_text(x.labels) l GROUP BY 1, 2, 3, 4 HAVING sum(x.d) != 0
    )
    SELECT count(*) INTO entered FROM ch WHERE n_state = 'idle';
    IF entered > 0 THEN PERFORM pg_notify('glidein_work', ''); END IF;
    RETURN NULL;
END $$;

-- name: connection_types
-- Run by each new connection of the store's pool, with empty arrays: asyncpg learns here the array
-- and record types the store's statements use (it asks PostgreSQL once per connection and type,
-- 12-19 ms on a busy server), not at the first claim or heartbeat that uses each.
SELECT $1::bigint[], $2::int[], $3::float8[], $4::boolean[], $5::bytea[], ARRAY(SELECT ROW(1::bigint, ''::text));

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- name: schema_lock
SELECT pg_advisory_xact_lock(7245110001);

-- name: schema_version
SELECT coalesce((SELECT value::int FROM meta WHERE key = 'schema_version'), 0);

-- name: schema_version_set
INSERT INTO meta (key, value) VALUES ('schema_version', $1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: analyze
-- The columns the claims, the demand and the job list filter or sort on: the JSON spec's statistics
-- (most of the cost of a full ANALYZE) are left to autovacuum.
ANALYZE jobs (owner, state, cpus, memory_mb, gpus, disk_mb, walltime_s, sites, priority, finished_at);

-- name: jobs_estimate
-- The planner's idea of the jobs table's size (-1 before its first analyze).
SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass;

-- Tokens and TOTP.

-- name: token_insert
INSERT INTO tokens (hash, role, subject, created_at, expires_at, id, scopes) VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: token_lookup
SELECT role, subject, expires_at, id, scopes FROM tokens WHERE hash = $1 AND NOT revoked;

-- name: token_list
SELECT id, role, subject, scopes, created_at, expires_at, revoked_at FROM tokens
WHERE ($1::text IS NULL OR role = $1) AND ($2::text IS NULL OR subject = $2) AND ($3 OR NOT revoked)
ORDER BY created_at DESC LIMIT $4;

-- name: token_revoke
UPDATE tokens SET revoked = true, revoked_at = $1 WHERE id = $2 AND NOT revoked RETURNING id;

-- name: token_revoke_subject
UPDATE tokens SET revoked = true, revoked_at = $1 WHERE role = $2 AND subject = $3 AND NOT revoked RETURNING id;

-- name: token_revoke_site_pilots
UPDATE tokens SET revoked = true, revoked_at = $1
WHERE role = 'pilot' AND NOT revoked AND subject IN (SELECT id::text FROM pilots WHERE site = $2)
RETURNING id;

-- name: token_renew
UPDATE tokens SET expires_at = $1 WHERE id = $2 AND NOT revoked AND expires_at IS NOT NULL AND expires_at < $1;

-- name: token_purge
DELETE FROM tokens WHERE (expires_at IS NOT NULL AND expires_at < $1) OR (revoked_at IS NOT NULL AND revoked_at < $1);

-- name: totp_set
INSERT INTO totp (subject, secret, created_at) VALUES ($1, $2, $3)
ON CONFLICT (subject) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at, last_step = 0;

-- name: totp_get
SELECT secret FROM totp WHERE subject = $1;

-- name: totp_use
UPDATE totp SET last_step = $1 WHERE subject = $2 AND last_step < $1 RETURNING 1;

-- Jobs.

-- A submit takes its jobs' ids from the table's sequence, copies the jobs in (COPY, no statement to
-- parse per job), then counts them into the kept deltas with one row per group worked out from its
-- specs (glidein_server.store.added) and wakes the replicas' pilots. glidein.counted tells the insert
-- trigger, for this transaction only, that the jobs are counted already.
-- name: job_ids
-- A submit's ids, in one array (10,000 rows cost the server 0.8 µs each to receive, the array 0.15).
SELECT array_agg(nextval((SELECT pg_get_serial_sequence('jobs', 'id'))::regclass))
FROM (SELECT set_config('glidein.counted', 'on', true)) counted, generate_series(1, $1);

-- name: jobs_added
WITH shapes AS (
    INSERT INTO idle_shape_deltas (cpus, memory_mb, gpus, disk_mb, walltime_s, sites, n)
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::int[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[])
), counts AS (
    INSERT INTO job_count_deltas (owner, state, multicore, n, cores)
    SELECT $8, 'idle', m, n, c FROM unnest($9::boolean[], $10::bigint[], $11::bigint[]) AS t(m, n, c)
), labels AS (
    INSERT INTO label_count_deltas (key, value, owner, state, n)
    SELECT k, v, $8, 'idle', n FROM unnest($12::text[], $13::text[], $14::bigint[]) AS t(k, v, n)
)
SELECT pg_notify('glidein_work', '');

-- name: job_get
SELECT j.id, j.owner, j.state, j.spec::text, j.retries_used, j.attempts, j.submitted_at, j.finished_at, j.exit_code,
       j.reason, j.site, j.result_attempt
FROM jobs j WHERE j.id = $1;

-- name: job_page
-- {where}: the filter's conditions (job_where_*), so that each combination is planned for itself;
-- {limit} and {offset}: the numbers of their parameters; {order}: ASC or DESC. Keyset paging
-- (job_where_after/before) starts a page past the previous page's last id.
SELECT j.id, j.owner, j.state, j.spec::text, j.retries_used, j.attempts, j.submitted_at, j.finished_at, j.exit_code,
       j.reason, j.site, j.result_attempt
FROM jobs j WHERE {where}
ORDER BY j.id {order} LIMIT {limit} OFFSET {offset};

-- name: job_counts
SELECT j.state, count(*) FROM jobs j WHERE {where} GROUP BY j.state;

-- name: job_where_owner
j.owner = ${n}::text

-- name: job_where_labels
j.spec -> 'labels' @> ${n}::jsonb

-- name: job_where_ids
j.id = ANY(${n}::bigint[])

-- name: job_where_state
j.state = ${n}::text

-- name: job_where_state_not_idle
j.state = ${n}::text AND j.state <> 'idle'

-- name: job_where_after
j.id > ${n}::bigint

-- name: job_where_before
j.id < ${n}::bigint

-- name: label_counts
-- The job list's counts under one label filter, from the running aggregate.
SELECT state, sum(n)::bigint FROM label_count_deltas WHERE key = $1 AND value = $2 AND ($3::text IS NULL OR owner = $3)
GROUP BY state HAVING sum(n) > 0;

-- name: outputs_of_attempts
SELECT attempt_id, name, sha256, size FROM outputs WHERE attempt_id = ANY($1::bigint[]) ORDER BY attempt_id, name;

-- name: usage_of_attempts
SELECT id, wall_s, max_rss_mb, cpu_s, provenance FROM attempts WHERE id = ANY($1::bigint[]);

-- name: job_state_for_update
SELECT state FROM jobs WHERE id = $1 FOR UPDATE;

-- name: job_cancel
UPDATE jobs SET state = 'cancelled', finished_at = $1, reason = 'cancelled by request' WHERE id = $2;

-- name: job_has_active_attempt
SELECT 1 FROM attempts WHERE job_id = $1 AND state != 'ended';

-- name: job_retry_request
UPDATE jobs SET state = 'idle', retries_used = 0, finished_at = NULL, exit_code = NULL, reason = $2,
    spec = $3::jsonb, cpus = $4, memory_mb = $5, gpus = $6, walltime_s = $7, sites = $8, result_attempt = NULL
WHERE id = $1;

-- name: job_spec_for_update
SELECT state, spec::text FROM jobs WHERE id = $1 FOR UPDATE;

-- name: job_hold
UPDATE jobs SET state = 'held', reason = $2 WHERE id = $1 AND state IN ('idle', 'claimed', 'running');

-- name: job_release
UPDATE jobs SET state = 'idle', reason = $2 WHERE id = $1 AND state = 'held';

-- name: job_event_insert
INSERT INTO job_events (job_id, at, actor, action, reason, changes) VALUES ($1, $2, $3, $4, $5, $6);

-- name: job_events_of
SELECT job_id, at, actor, action, reason, changes FROM job_events WHERE job_id = ANY($1::bigint[])
ORDER BY job_id, id;

-- name: job_retry_budget
SELECT retries_used, max_retries, spec::text FROM jobs WHERE id = $1;

-- name: attempts_of_job
SELECT a.id, a.pilot_id, a.site, a.outcome, a.exit_code, a.reason, a.claimed_at, a.started_at, a.finished_at,
       a.stdout_tail, a.stderr_tail, j.cpus, a.wall_s, a.max_rss_mb, a.cpu_s, a.provenance
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.job_id = $1 ORDER BY a.id;

-- name: job_output
SELECT o.name, o.sha256, o.size FROM outputs o JOIN jobs j ON j.result_attempt = o.attempt_id
WHERE j.id = $1 AND o.name = $2;

-- name: outputs_of_attempt
SELECT name, sha256, size FROM outputs WHERE attempt_id = $1 ORDER BY name;

-- name: file_owner_insert
INSERT INTO file_owners (sha256, owner, size) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING;

-- name: file_user_may_read
SELECT EXISTS (SELECT 1 FROM file_owners WHERE sha256 = $1 AND owner = $2)
    OR EXISTS (SELECT 1 FROM outputs o JOIN jobs j ON j.id = o.job_id WHERE o.sha256 = $1 AND j.owner = $2);

-- name: file_pilot_may_read
SELECT EXISTS (
    SELECT 1 FROM attempts a JOIN jobs j ON j.id = a.job_id
    WHERE a.pilot_id = $1 AND a.state != 'ended'
      AND j.spec -> 'inputs' @> jsonb_build_array(jsonb_build_object('sha256', $2::text)));

-- name: site_may_read_file
SELECT EXISTS (
    SELECT 1 FROM jobs j
    WHERE j.state IN ('idle', 'claimed', 'running') AND (j.sites = '' OR position($1 in j.sites) > 0)
      AND j.spec -> 'inputs' @> jsonb_build_array(jsonb_build_object('sha256', $2::text)));

-- Sites and demand.

-- name: site_shapes
SELECT name, shape FROM sites WHERE shape IS NOT NULL;

-- name: site_report
INSERT INTO sites (name, shape, last_seen) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET shape = excluded.shape, last_seen = excluded.last_seen;

-- name: idle_shapes
SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, sum(n)::bigint FROM idle_shape_deltas
GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(n) > 0;

-- name: deltas_compact
WITH gone AS (DELETE FROM idle_shape_deltas RETURNING *)
INSERT INTO idle_shape_deltas
SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites, sum(n) FROM gone
GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(n) != 0;
WITH gone AS (DELETE FROM job_count_deltas RETURNING *)
INSERT INTO job_count_deltas SELECT owner, state, multicore, sum(n), sum(cores) FROM gone GROUP BY 1, 2, 3
HAVING sum(n) != 0 OR sum(cores) != 0;
WITH gone AS (DELETE FROM attempt_outcome_deltas RETURNING *)
INSERT INTO attempt_outcome_deltas SELECT site, outcome, sum(n) FROM gone GROUP BY 1, 2 HAVING sum(n) != 0;
WITH gone AS (DELETE FROM label_count_deltas RETURNING *)
INSERT INTO label_count_deltas SELECT key, value, owner, state, sum(n) FROM gone GROUP BY 1, 2, 3, 4 HAVING sum(n) != 0;
WITH gone AS (DELETE FROM active_job_deltas RETURNING *)
INSERT INTO active_job_deltas SELECT site, key, value, multicore, sum(n), sum(cores) FROM gone
GROUP BY 1, 2, 3, 4 HAVING sum(n) != 0 OR sum(cores) != 0;

-- name: site_demand_read
-- A demand read in one statement ($1: the site; $2: pilots heard from since): every site's shape,
-- health, start failures and controls; the idle jobs by shape, from the kept aggregate; the free
-- room of the site's live pilots; and, only when the site is capped, its pilots alive.
SELECT ARRAY(SELECT ROW(name, shape, health, start_failures, last_failure_at, mode, max_cpus) FROM sites),
       ARRAY(SELECT ROW(cpus, memory_mb, gpus, disk_mb, walltime_s, sites, sum(n)::bigint) FROM idle_shape_deltas
             GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(n) > 0),
       ARRAY(SELECT ROW(free_cpus, free_memory_mb, free_gpus, free_disk_mb, lifetime_s) FROM pilots
             WHERE site = $1 AND state = 'running' AND last_seen >= $2),
       CASE WHEN (SELECT max_cpus FROM sites WHERE name = $1) IS NOT NULL
            THEN (SELECT count(*) FROM pilots WHERE site = $1 AND state IN ('pending', 'running')) END;

-- name: live_pilots_free
SELECT free_cpus, free_memory_mb, free_gpus, free_disk_mb, lifetime_s FROM pilots
WHERE site = $1 AND state = 'running' AND last_seen >= $2;

-- name: site_health_all
SELECT name, health FROM sites;

-- name: site_failure_set
INSERT INTO sites (name, pilot_failure) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET pilot_failure = excluded.pilot_failure;

-- name: site_mode_set
INSERT INTO sites (name, mode) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET mode = excluded.mode;

-- name: site_cap_set
INSERT INTO sites (name, max_cpus) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET max_cpus = excluded.max_cpus;

-- name: site_claims_lock
-- Claims for a site with a cap on its cores wait for each other (any replica's), so that each
-- counts the cores the ones before it claimed; claims for other sites never wait.
SELECT 1 FROM sites WHERE name = $1 FOR UPDATE;

-- name: site_cpus_in_use
-- From the kept counts of active attempts (migration_13), not a join of every running job.
SELECT coalesce(sum(cores), 0)::bigint FROM active_job_deltas WHERE site = $1 AND key = '';

-- name: sites_cpus_in_use
-- The cores each site's active attempts hold, every site in one statement (the summary's), kept.
SELECT site, sum(cores)::bigint FROM active_job_deltas WHERE key = '' GROUP BY site HAVING sum(cores) != 0;

-- name: site_health_apply
UPDATE sites SET health = health * $1 + $2 WHERE name = $3;

-- name: site_start_failed
INSERT INTO sites (name, start_failures, last_failure_at) VALUES ($1, 1, $2)
ON CONFLICT (name) DO UPDATE SET start_failures = sites.start_failures + 1, last_failure_at = excluded.last_failure_at;

-- name: site_start_ok
UPDATE sites SET start_failures = 0 WHERE name = (SELECT site FROM pilots WHERE id = $1) AND start_failures != 0;

-- name: summary_jobs
-- From the running aggregate (a few rows per owner and state, compacted now and then), not the jobs.
SELECT state, sum(n)::bigint FROM job_count_deltas WHERE $1::text IS NULL OR owner = $1
GROUP BY state HAVING sum(n) > 0;

-- name: summary_pilots
SELECT state, count(*) FROM pilots GROUP BY state;

-- name: summary_occupancy
SELECT sum(occupancy * cpus * (ended_at - started_at)), sum(cpus * (ended_at - started_at))
FROM pilots WHERE state = 'ended' AND occupancy IS NOT NULL AND started_at IS NOT NULL;

-- name: summary_sites
SELECT name, shape, last_seen, start_failures, last_failure_at, mode, max_cpus, pilot_failure FROM sites ORDER BY name;

-- name: summary_site_pilots
SELECT site, state, count(*) FROM pilots WHERE state != 'ended' GROUP BY site, state;

-- name: summary_problems
SELECT id, site, host, exit_reason FROM pilots
WHERE ended_at > $1 AND (exit_reason LIKE 'black hole%' OR exit_reason LIKE 'self-test failed%')
ORDER BY id DESC LIMIT 50;

-- Firewalled sites: out-of-job staging.

-- name: site_network_get
SELECT network FROM site_networks WHERE site = $1;

-- name: site_network_set
INSERT INTO site_networks (site, network, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (site) DO UPDATE SET network = excluded.network, updated_at = excluded.updated_at;

-- name: staging_staged
SELECT j.id, j.state, j.site, j.spec::text FROM staged_jobs s JOIN jobs j ON j.id = s.job_id
WHERE s.site = $1 ORDER BY j.id;

-- name: staging_eligible
SELECT j.id, j.state, j.site, j.spec::text FROM jobs j
WHERE j.state = 'idle' AND (j.sites = '' OR position($1 in j.sites) > 0)
  AND j.cpus <= $2 AND j.memory_mb <= $3 AND j.gpus <= $4 AND j.disk_mb <= $5 AND j.walltime_s <= $6
  AND NOT EXISTS (SELECT 1 FROM staged_jobs s WHERE s.site = $7 AND s.job_id = j.id)
ORDER BY j.priority DESC, j.cpus DESC, j.id
LIMIT $8;

-- name: staged_insert
INSERT INTO staged_jobs (site, job_id, staged_at)
SELECT $1, id, $2 FROM jobs WHERE id = ANY($3::bigint[]) AND (sites = '' OR position($4 in sites) > 0)
ON CONFLICT DO NOTHING;

-- name: staged_delete
DELETE FROM staged_jobs WHERE site = $1 AND job_id = ANY($2::bigint[]);

-- name: notify_work
SELECT pg_notify('glidein_work', '');

-- Pilots, claims and attempts.
--
-- A statement that reaches a job from its attempt tests the job's state on the row alone: a
-- per-row subquery, or `(jobs.state || '')`, which no index on the state can serve. The planner's
-- statistics of the state lag behind (taken when the queue was all idle, a claimed or held job
-- looks one in a million), so a bare `jobs.state IN (...)` made it scan every claimed and running
-- job (jobs_busy_owner, jobs_state) for each report instead of reading one job by its id.

-- name: pilot_insert
INSERT INTO pilots (site, state, created_at) VALUES ($1, 'pending', $2) RETURNING id;

-- name: pilot_state_for_update
SELECT state, site FROM pilots WHERE id = $1 FOR UPDATE;

-- name: pilot_end
UPDATE pilots SET state = 'ended', ended_at = $1, exit_reason = coalesce(exit_reason, $2) WHERE id = $3;

-- name: pilot_register
UPDATE pilots SET state = $1::text, batch_id = $2, host = $3, cpus = $4, memory_mb = $5, gpus = $6, disk_mb = $7,
    end_time = $8, free_cpus = $4, free_memory_mb = $5, free_gpus = $6, free_disk_mb = $7, lifetime_s = $9,
    started_at = $10::float8, last_seen = $10::float8, exit_reason = $11,
    ended_at = CASE WHEN $1::text = 'ended' THEN $10::float8 END
WHERE id = $12;

-- name: pilot_sync_heads
-- The first statement of the syncs that end no attempt, all in one (one round trip, not one per
-- sync): each pilot's row as it was, written (what it has free, its leases renewed when a quarter
-- spent); the attempts to stop as an array; whether it has an active attempt it does not hold.
-- $1 now, $2 the new lease expiry, $3 renew those expiring before it; {rows}: eight parameters per
-- sync from $4 (the pilot, its free cores, memory, GPUs and disk, its lifetime and occupancy, the
-- attempts it holds) and its place, one prepared statement per count. (With a parameter per column
-- as an array, the plan made without the arrays' length looked dearer than one for a single sync,
-- so PostgreSQL planned every call afresh: six times the cost of a heartbeat.)
WITH i (id, free_cpus, free_memory_mb, free_gpus, free_disk_mb, lifetime_s, occupancy, held, k) AS (
    VALUES {rows}
), p AS (
    UPDATE pilots SET free_cpus = i.free_cpus, free_memory_mb = i.free_memory_mb, free_gpus = i.free_gpus,
        free_disk_mb = i.free_disk_mb, lifetime_s = i.lifetime_s, last_seen = $1, occupancy = i.occupancy
    FROM i WHERE pilots.id = i.id AND pilots.state = 'running'
    RETURNING pilots.id
), l AS (
    UPDATE attempts SET lease_expires = $2
    WHERE pilot_id IN (SELECT id FROM p) AND state != 'ended' AND lease_expires < $3
)
SELECT i.k, p0.state, p0.site, p0.cpus, p0.memory_mb, p0.gpus, p0.disk_mb, s.mode, s.max_cpus, n.network,
       ARRAY(SELECT a.id FROM attempts a
             WHERE a.pilot_id = i.id AND a.state != 'ended'
               AND (SELECT j.state FROM jobs j WHERE j.id = a.job_id) IN ('cancelled', 'held') ORDER BY a.id),
       EXISTS (SELECT 1 FROM attempts a WHERE a.pilot_id = i.id AND a.state != 'ended' AND a.id <> ALL(i.held))
FROM i JOIN pilots p0 ON p0.id = i.id LEFT JOIN sites s ON s.name = p0.site LEFT JOIN site_networks n ON n.site = p0.site;

-- name: pilot_sync_head
-- A sync's first statement: the pilot, and its site's operator controls and network; last, whether
-- the pilot has an active attempt it does not list as held ($2): only then are lost claims looked for.
SELECT p.state, p.site, p.cpus, p.memory_mb, p.gpus, p.disk_mb, s.mode, s.max_cpus, n.network, NULL,
       EXISTS (SELECT 1 FROM attempts a WHERE a.pilot_id = $1 AND a.state != 'ended' AND a.id <> ALL($2::bigint[]))
FROM pilots p LEFT JOIN sites s ON s.name = p.site LEFT JOIN site_networks n ON n.site = p.site
WHERE p.id = $1;

-- name: pilot_sync_tail
-- A sync's last statement (before any claim): what the pilot has free, its leases renewed when a
-- quarter spent ($10: new expiry; $11: renew those expiring before), and its attempts whose job
-- was cancelled or held (the pilot stops them).
WITH p AS (
    UPDATE pilots SET free_cpus = $1, free_memory_mb = $2, free_gpus = $3, free_disk_mb = $4, lifetime_s = $5,
        last_seen = $6, occupancy = $7, jobs_run = jobs_run + $8
    WHERE id = $9 AND state = 'running'
), l AS (
    UPDATE attempts SET lease_expires = $10 WHERE pilot_id = $9 AND state != 'ended' AND lease_expires < $11
)
SELECT a.id FROM attempts a
WHERE a.pilot_id = $9 AND a.state != 'ended' AND (SELECT j.state FROM jobs j WHERE j.id = a.job_id) IN ('cancelled', 'held');

-- name: pilot_heartbeat
-- A heartbeat: a sync that only reports (no start, finished attempt, held list or claim). In one
-- statement the pilot's row is written ($1..$7: free cpus, memory, GPUs, disk, lifetime, now,
-- occupancy; $8: the pilot), its leases renewed when a quarter spent ($9: new expiry; $10: renew
-- those expiring before), and its site's mode (a draining site's pilots leave) and its attempts whose
-- job was cancelled or held (the pilot stops them) read. No row: the pilot is not running. The row
-- written is the one read, and no more is read than a heartbeat answers: about a fifth less of
-- PostgreSQL's CPU than a sync's own first statement.
WITH p AS (
    UPDATE pilots SET free_cpus = $1, free_memory_mb = $2, free_gpus = $3, free_disk_mb = $4, lifetime_s = $5,
        last_seen = $6, occupancy = $7
    WHERE id = $8 AND state = 'running'
    RETURNING site
), l AS (
    UPDATE attempts SET lease_expires = $9
    WHERE pilot_id = $8 AND state != 'ended' AND lease_expires < $10 AND EXISTS (SELECT 1 FROM p)
)
SELECT (SELECT s.mode FROM sites s WHERE s.name = p.site),
       ARRAY(SELECT a.id FROM attempts a
             WHERE a.pilot_id = $8 AND a.state != 'ended'
               AND (SELECT j.state FROM jobs j WHERE j.id = a.job_id) IN ('cancelled', 'held') ORDER BY a.id)
FROM p;

-- name: pilot_heartbeats
-- pilot_heartbeat for many pilots at once, each its own as alone: one array per parameter of
-- pilot_heartbeat, the pilots in id order (the order rows are locked in everywhere); a row for
-- each pilot running, with its id first.
WITH b AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::int[], $5::bigint[], $6::float8[],
                         $7::float8[], $8::float8[], $9::float8[], $10::float8[])
        AS b(id, cpus, memory_mb, gpus, disk_mb, lifetime_s, now, occupancy, renew, renew_before)
), p AS (
    UPDATE pilots SET free_cpus = b.cpus, free_memory_mb = b.memory_mb, free_gpus = b.gpus, free_disk_mb = b.disk_mb,
        lifetime_s = b.lifetime_s, last_seen = b.now, occupancy = b.occupancy
    FROM b WHERE pilots.id = b.id AND pilots.state = 'running'
    RETURNING pilots.id, pilots.site
), l AS (
    UPDATE attempts a SET lease_expires = b.renew FROM b
    WHERE a.pilot_id = ANY($1) AND a.pilot_id = b.id AND a.state != 'ended' AND a.lease_expires < b.renew_before
      AND b.id IN (SELECT id FROM p)
)
SELECT p.id, (SELECT s.mode FROM sites s WHERE s.name = p.site),
       ARRAY(SELECT a.id FROM attempts a
             WHERE a.pilot_id = p.id AND a.state != 'ended'
               AND (SELECT j.state FROM jobs j WHERE j.id = a.job_id) IN ('cancelled', 'held') ORDER BY a.id)
FROM p;

-- name: site_claim_control
SELECT s.mode, s.max_cpus, n.network FROM (SELECT $1::text AS name) x
LEFT JOIN sites s ON s.name = x.name LEFT JOIN site_networks n ON n.site = x.name;

-- name: recent_runtimes
SELECT a.wall_s, j.walltime_s FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.outcome = 'done' AND a.wall_s IS NOT NULL
ORDER BY a.id DESC LIMIT $1;

-- name: idle_too_long
-- Whether a job longer than a retiring pilot's time left waits for its site: read from the kept
-- aggregate of idle shapes, whatever the queue's length (the jobs themselves would be read to the
-- end when no such job waits).
SELECT 1 FROM idle_shape_deltas WHERE walltime_s > $1 AND (sites = '' OR position($2 in sites) > 0)
GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(n) > 0 LIMIT 1;

-- name: pilot_capacity
SELECT site, cpus, memory_mb, gpus, disk_mb, free_cpus, free_memory_mb, free_gpus, free_disk_mb, lifetime_s, last_seen
FROM pilots WHERE id = $1 AND state = 'running';

-- name: pilot_exit
UPDATE pilots SET occupancy = $1, exit_reason = $2 WHERE id = $3;

-- name: pilots_silent
SELECT id FROM pilots WHERE state = 'running' AND last_seen < $1;

-- name: pilot_cancels
SELECT a.id FROM attempts a
WHERE a.pilot_id = $1 AND a.state != 'ended' AND (SELECT j.state FROM jobs j WHERE j.id = a.job_id) IN ('cancelled', 'held');

-- name: active_attempts_of_pilot
SELECT id, job_id FROM attempts WHERE pilot_id = $1 AND state != 'ended' ORDER BY id FOR UPDATE;

-- name: active_claims_of_pilot
-- With the number of the pilot's sync whose answer carried each claim (NULL: not numbered).
SELECT id, job_id, claim_seq FROM attempts WHERE pilot_id = $1 AND state != 'ended' ORDER BY id FOR UPDATE;

-- name: expired_attempts
SELECT id, job_id FROM attempts WHERE state != 'ended' AND lease_expires < $1 ORDER BY id FOR UPDATE SKIP LOCKED;

-- name: idle_candidates
-- Every user's best idle jobs of each shape that fits ($1..$6: cpus, memory, GPUs, disk, walltime,
-- ',site,'; the limit of each: as many of that shape as the claimers can take together, their cores
-- over the shape's plus their backlogs): one statement, each (user, shape) an index seek however long
-- the queue; rows are locked as they are read, skipping those another claimer holds. Every row locked
-- and not claimed costs: claimers in flight together skip each other's locked rows, so a limit of
-- the claimers' cores for every shape (four times the 4-core jobs they could take, and every user's)
-- made two users' candidate reads 6 ms each instead of 0.8. The limit's numbers are written into the
-- text as powers of two, a few prepared statements (parameters there made plans so bad that
-- PostgreSQL planned every claim afresh, which cost as much as running it); with the limit over the
-- shape's cores the planner still reads each seek in index order, as the plan test checks.
WITH RECURSIVE o(owner) AS (
    SELECT min(owner) FROM jobs WHERE state = 'idle'
    UNION ALL
    SELECT (SELECT min(owner) FROM jobs WHERE state = 'idle' AND owner > o.owner) FROM o WHERE o.owner IS NOT NULL
), s AS (
    SELECT cpus, memory_mb, gpus, disk_mb, walltime_s, sites FROM idle_shape_deltas
    WHERE cpus <= $1 AND memory_mb <= $2 AND gpus <= $3 AND disk_mb <= $4 AND walltime_s <= $5
      AND (sites = '' OR position($6 in sites) > 0)
    GROUP BY cpus, memory_mb, gpus, disk_mb, walltime_s, sites HAVING sum(n) > 0
)
SELECT o.owner, j.id, j.cpus, j.memory_mb, j.gpus, j.disk_mb, j.walltime_s, j.priority
FROM o CROSS JOIN s CROSS JOIN LATERAL (
    SELECT id, cpus, memory_mb, gpus, disk_mb, walltime_s, priority FROM jobs
    WHERE state = 'idle' AND owner = o.owner
      AND glidein_shape_key(cpus, memory_mb, gpus, disk_mb, walltime_s, sites)
        = glidein_shape_key(s.cpus, s.memory_mb, s.gpus, s.disk_mb, s.walltime_s, s.sites)
      AND cpus = s.cpus AND memory_mb = s.memory_mb AND gpus = s.gpus
      AND disk_mb = s.disk_mb AND walltime_s = s.walltime_s AND sites = s.sites
    ORDER BY priority DESC, id
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
) j
WHERE o.owner IS NOT NULL;

-- name: busy_cores
-- Each user's cores in use, from the kept deltas (summing the running jobs cost 8.4 ms a claim at 50,000).
SELECT owner, sum(cores)::bigint FROM job_count_deltas WHERE state IN ('claimed', 'running') GROUP BY owner
HAVING sum(cores) > 0;

-- name: idle_candidates_staged
SELECT j.owner, j.id, j.cpus, j.memory_mb, j.gpus, j.disk_mb, j.walltime_s
FROM staged_jobs s JOIN jobs j ON j.id = s.job_id
WHERE s.site = $8 AND j.state = 'idle' AND j.cpus <= $1 AND j.memory_mb <= $2 AND j.gpus <= $3
  AND j.disk_mb <= $4 AND j.walltime_s <= $5 AND (j.sites = '' OR position($6 in j.sites) > 0)
ORDER BY j.priority DESC, j.cpus DESC, j.id
LIMIT $7
FOR UPDATE OF j SKIP LOCKED;

-- Candidates are locked as they are read, skipping rows another claimer holds, so concurrent
-- claimers (on any replica) get disjoint candidates and never wait for each other; the scan is
-- bounded by the pilots' size. The claim of the chosen ones, for every pilot claiming in the
-- transaction, is then one statement: mark them claimed and create their attempts (SKIP LOCKED
-- there too, should a caller not hold the locks). $1 now, $2 lease expiry; {rows}: four parameters
-- per chosen job from $3 (the job, its pilot, the pilot's sync number, the site), one prepared
-- statement per count: with arrays instead, the plan made without their length looked dearer than
-- one for two jobs, so PostgreSQL planned every claim afresh.
-- name: claim_jobs
WITH want (id, pilot_id, seq, site) AS (
    VALUES {rows}
), picked AS (
    SELECT j.id FROM jobs j JOIN want w ON w.id = j.id WHERE j.state = 'idle' ORDER BY j.id FOR UPDATE OF j SKIP LOCKED
), claimed AS (
    UPDATE jobs j SET state = 'claimed', attempts = j.attempts + 1, site = w.site
    FROM picked JOIN want w ON w.id = picked.id WHERE j.id = picked.id
    RETURNING j.id, j.spec
), made AS (
    INSERT INTO attempts (job_id, pilot_id, site, lease, state, claimed_at, lease_expires, claim_seq)
    SELECT c.id, w.pilot_id, w.site, replace(gen_random_uuid()::text, '-', ''), 'claimed', $1, $2, w.seq
    FROM claimed c JOIN want w ON w.id = c.id
    RETURNING id, job_id, lease
)
SELECT made.id, made.job_id, made.lease, claimed.spec::text FROM made JOIN claimed ON claimed.id = made.job_id;

-- name: attempt_active
SELECT a.job_id FROM attempts a WHERE a.id = $1 AND a.lease = $2 AND a.pilot_id = $3 AND a.state != 'ended'
FOR UPDATE;

-- name: attempt_start
WITH a AS (
    UPDATE attempts SET state = 'running', started_at = $1
    WHERE id = $2 AND lease = $3 AND pilot_id = $4 AND state = 'claimed'
    RETURNING job_id
), j AS (
    UPDATE jobs SET state = 'running' FROM a WHERE jobs.id = a.job_id AND (jobs.state || '') = 'claimed'
)
SELECT job_id FROM a;

-- name: attempt_end
UPDATE attempts SET state = 'ended', outcome = $1, exit_code = $2, reason = $3, finished_at = $4, wall_s = $5,
    max_rss_mb = $6, stdout_tail = $7, stderr_tail = $8, cpu_s = $11, provenance = $12,
    started_at = coalesce(started_at, CASE WHEN $9::float8 > 0 THEN $4 - $9 END)
WHERE id = $10
RETURNING site;

-- name: attempt_end_done
-- A DONE report without outputs in one statement: the attempt ends, if this pilot's lease still owns
-- it ($12: lease, $13: pilot), and its job is done; the others as in attempt_end, less the outcome.
WITH a AS (
    UPDATE attempts SET state = 'ended', outcome = 'done', exit_code = $1, reason = $2, finished_at = $3,
        wall_s = $4, max_rss_mb = $5, stdout_tail = $6, stderr_tail = $7, cpu_s = $10, provenance = $11,
        started_at = coalesce(started_at, CASE WHEN $8::float8 > 0 THEN $3 - $8 END)
    WHERE id = $9 AND lease = $12 AND pilot_id = $13 AND state != 'ended'
    RETURNING job_id, site
), j AS (
    UPDATE jobs SET state = 'done', finished_at = $3, exit_code = $1, reason = NULL, result_attempt = $9
    FROM a WHERE jobs.id = a.job_id AND (jobs.state || '') IN ('claimed', 'running')
)
SELECT job_id FROM a;

-- name: attempt_end_done_many
-- Several DONE reports without outputs of one pilot ($12) in one statement, as attempt_end_done:
-- $1..$10 the reports' columns as arrays (in attempt order), $11 now; the attempts it ended.
WITH f AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::float8[], $4::float8[], $5::text[], $6::text[], $7::float8[],
                         $8::bytea[], $9::bigint[], $10::text[])
        AS f(exit_code, reason, wall_s, max_rss_mb, stdout_tail, stderr_tail, cpu_s, provenance, id, lease)
), a AS (
    UPDATE attempts t SET state = 'ended', outcome = 'done', exit_code = f.exit_code, reason = f.reason,
        finished_at = $11, wall_s = f.wall_s, max_rss_mb = f.max_rss_mb, stdout_tail = f.stdout_tail,
        stderr_tail = f.stderr_tail, cpu_s = f.cpu_s, provenance = f.provenance,
        started_at = coalesce(t.started_at, CASE WHEN f.wall_s > 0 THEN $11 - f.wall_s END)
    FROM f WHERE t.id = f.id AND t.lease = f.lease AND t.pilot_id = $12 AND t.state != 'ended'
    RETURNING t.id, t.job_id, f.exit_code
), j AS (
    UPDATE jobs SET state = 'done', finished_at = $11, exit_code = a.exit_code, reason = NULL, result_attempt = a.id
    FROM a WHERE jobs.id = a.job_id AND (jobs.state || '') IN ('claimed', 'running')
)
SELECT id FROM a;

-- name: attempt_output_owner
SELECT a.job_id, j.spec::text FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.id = $1 AND a.lease = $2 AND a.pilot_id = $3 AND a.state != 'ended';

-- name: output_insert
INSERT INTO outputs (attempt_id, job_id, name, sha256, size) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (attempt_id, name) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size;

-- name: job_done
UPDATE jobs SET state = 'done', finished_at = $1, exit_code = $2, reason = NULL, result_attempt = $3
WHERE id = $4 AND state IN ('claimed', 'running');

-- name: job_failed
-- The failed attempt is the job's result: the outputs it left are what `glidein fetch` brings back.
UPDATE jobs SET state = 'failed', finished_at = $1, exit_code = $2, reason = $3, retries_used = retries_used + 1,
    result_attempt = $4
WHERE id = $5 AND state IN ('claimed', 'running');

-- name: job_retry
UPDATE jobs SET state = 'idle', exit_code = $1, reason = $2, retries_used = retries_used + 1
WHERE id = $3 AND state IN ('claimed', 'running');

-- name: job_retry_grown
UPDATE jobs SET state = 'idle', exit_code = $1, reason = $2, retries_used = retries_used + 1,
    memory_mb = $3, walltime_s = $4, spec = $5::jsonb
WHERE id = $6 AND state IN ('claimed', 'running');

-- name: job_requeue
UPDATE jobs SET state = 'idle', reason = $1 WHERE id = $2 AND state IN ('claimed', 'running');

-- name: recover_leases
UPDATE attempts SET lease_expires = greatest(lease_expires, $1) WHERE state != 'ended';

-- name: recover_pilots
UPDATE pilots SET last_seen = greatest(coalesce(last_seen, 0), $1) WHERE state = 'running';

-- Monitoring.

-- name: monitoring_jobs
SELECT owner, state, multicore, sum(n)::bigint FROM job_count_deltas GROUP BY 1, 2, 3 HAVING sum(n) > 0;

-- name: monitoring_running
-- The kept counts of active attempts: per site in total (key '') and per value of the dataset label ($1).
SELECT site, key, value, multicore, sum(n)::bigint, sum(cores)::bigint FROM active_job_deltas
WHERE key = '' OR key = $1 GROUP BY 1, 2, 3, 4 HAVING sum(n) != 0;

-- name: monitoring_pilots
SELECT site, state, count(*), sum(cpus)::bigint, sum(CASE WHEN state = 'running' THEN free_cpus ELSE 0 END)::bigint,
       sum(CASE WHEN state = 'running' THEN coalesce(occupancy, 0) * cpus ELSE 0 END)
FROM pilots WHERE state != 'ended' AND (state = 'pending' OR last_seen >= $1) GROUP BY 1, 2;

-- name: monitoring_sites
SELECT name, last_seen, health, start_failures, last_failure_at FROM sites ORDER BY name;

-- name: monitoring_attempts
SELECT site, outcome, sum(n)::bigint FROM attempt_outcome_deltas GROUP BY 1, 2 HAVING sum(n) > 0;

-- name: migration_3
-- Retention: finished jobs are found by age; a purged job leaves the monitoring counts; an output's
-- file is found by hash to tell whether anything still refers to it.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('done', 'failed', 'cancelled');
CREATE INDEX outputs_job ON outputs (job_id);
CREATE FUNCTION glidein_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas SELECT owner, state, cpus > 1, -count(*) FROM old_rows GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION glidein_jobs_deleted();

-- Retention: finished jobs older than a cutoff leave with their attempts and outputs, in batches;
-- replicas purging at once skip each other's rows.

-- name: purge_pick
SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < $1
ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED;

-- name: purge_outputs
DELETE FROM outputs WHERE job_id = ANY($1::bigint[]) RETURNING sha256;

-- name: purge_attempts
DELETE FROM attempts WHERE job_id = ANY($1::bigint[]);

-- name: purge_staged
DELETE FROM staged_jobs WHERE job_id = ANY($1::bigint[]);

-- name: purge_events
DELETE FROM job_events WHERE job_id = ANY($1::bigint[]);

-- name: purge_jobs
DELETE FROM jobs WHERE id = ANY($1::bigint[]);

-- name: file_referenced
SELECT EXISTS (SELECT 1 FROM outputs WHERE sha256 = $1) OR EXISTS (SELECT 1 FROM file_owners WHERE sha256 = $1);

-- name: dataset_states
SELECT coalesce(spec -> 'labels' ->> $1, ''), state, count(*),
       coalesce(sum(CASE WHEN state = 'running' THEN cpus ELSE 0 END), 0)::bigint
FROM jobs GROUP BY 1, 2;

-- name: dataset_efficiency
SELECT coalesce(j.spec -> 'labels' ->> $1, ''), sum(a.cpu_s), sum(a.wall_s * j.cpus)
FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.state = 'ended' AND a.cpu_s IS NOT NULL AND a.wall_s > 0 GROUP BY 1;
