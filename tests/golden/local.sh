#!/bin/sh
# glidein pilot glidein-test-42, started by glidein-client's local scheduler as a detached process.
# Rendered from glidein_client/site/schedulers/templates/local.sh; every value is shell-quoted.
# Files in this directory: started (epoch seconds), exitcode (written when the pilot ends),
# stdout and stderr (the pilot's output), cancelled (written when the pilot is cancelled).
cd '/scratch/glidein sites/local-batch/glidein-test-42' || exit 97
date +%s >started.tmp && mv -f started.tmp started

# A TERM sent to this script (a cancel) is passed on to the pilot; before the pilot has
# started it ends the script.
child=
on_term() {
    if [ -z "$child" ]; then exit 143; fi
    kill -TERM "$child" 2>/dev/null
}
trap on_term TERM INT HUP

# Site set-up (batch.env_setup).
module load python/3.11
. /opt/glidein/env.sh

# The walltime ends the pilot as a batch system would: TERM at 43200 s (pilot.walltime
# less pilot.signal_grace, the warning), KILL 30 s later (exit code 124, or 137 when KILL was needed). --foreground keeps
# timeout and the pilot in this script's process group, so a signal to the group (a cancel,
# or a kill of the whole "job") reaches all of them, as a batch system's would.
timeout --foreground --signal=TERM --kill-after=30 43200 /opt/glidein/bin/python -m glidein_client.pilot run --url http://127.0.0.1:1 --token-file '/scratch/glidein sites/pilots-meta/glidein-test-42/token' --site test --disk 10240M --idle-timeout 120s --scratch '/scratch/glidein sites/pilots' --cpus 1 --memory 2048M --gpus 0 --walltime 43200s --drain-file '/scratch/glidein sites/pilots-meta/glidein-test-42/drain' --ca-file '/scratch/glidein sites/pilots-meta/glidein-test-42/ca.pem' &
child=$!
while :; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
done
echo "$code" >exitcode.tmp && mv -f exitcode.tmp exitcode
exit "$code"
