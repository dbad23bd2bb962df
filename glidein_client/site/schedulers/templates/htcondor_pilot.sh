#!/bin/bash
# glidein pilot ${tag}, started by HTCondor (glidein-client's HTCondor backend).
# Rendered from glidein_client/site/schedulers/templates/htcondor_pilot.sh and the site config
# ${config}: change that file, not this script.

# Site set-up (batch.env_setup).
${env_setup_lines}

cd ${workdir} || exit 97
exec ${pilot_command_lines}
