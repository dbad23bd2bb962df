#!/bin/sh
# glidein pilot ${tag}, started by glidein-client's local scheduler as a detached process.
# Rendered from glidein_client/site/schedulers/templates/local.sh; every value is shell-quoted.
# Files in this directory: started (epoch seconds), exitcode (written when the pilot ends),
# stdout and stderr (the pilot's output), cancelled (written when the pilot is cancelled).
cd ${batch_dir} || exit 97
date +%s >started.tmp && mv -f started.tmp started

# A TERM sent to this script (a cancel) is passed on to the pilot; before the pilot has
# started it ends the script.
child=
on_term() {
    if [ -z "$$child" ]; then exit 143; fi
    kill -TERM "$$child" 2>/dev/null
}
trap on_term TERM INT HUP

# Site set-up (batch.env_setup).
${env_setup_lines}

# The walltime ends the pilot as a batch system would: TERM at ${walltime_s} s (pilot.walltime
# less pilot.signal_grace, the warning), KILL ${kill_after_s} s later (exit code 124, or 137 when KILL was needed). --foreground keeps
# timeout and the pilot in this script's process group, so a signal to the group (a cancel,
# or a kill of the whole "job") reaches all of them, as a batch system's would.
timeout --foreground --signal=TERM --kill-after=${kill_after_s} ${walltime_s} ${pilot_command_lines} &
child=$$!
while :; do
    wait "$$child"
    code=$$?
    kill -0 "$$child" 2>/dev/null || break
done
echo "$$code" >exitcode.tmp && mv -f exitcode.tmp exitcode
exit "$$code"
