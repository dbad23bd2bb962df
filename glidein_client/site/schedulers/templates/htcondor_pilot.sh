#!/bin/bash
# glidein pilot ${tag}, started by HTCondor (glidein-client's HTCondor backend).
# Rendered from glidein_client/site/schedulers/templates/htcondor_pilot.sh and the site config
# ${config}: change that file, not this script.

# Site set-up (batch.env_setup).
${env_setup_lines}

${cd_line}
# The pilot ends itself before its walltime; should it not, timeout ends it at the walltime
# (exit code 124, read as a timeout) whether or not HTCondor enforces allowed_execute_duration.
# With pilot.signal_grace, the TERM comes that long before the walltime (the warning: jobs that
# end within it finish) and the KILL 60 s after the walltime.
exec timeout --signal=TERM --kill-after=${kill_after_s} ${walltime_s} ${pilot_command_lines}
