#!/bin/bash
#BSUB -J ${job_name}
#BSUB -cwd ${workdir}
#BSUB -o ${output}
#BSUB -e ${error}
#BSUB -W ${run_limit}
${directive_lines}
#
# glidein pilot ${job_name}, submitted by glidein-client's LSF backend.
# Rendered from glidein_client/site/schedulers/templates/lsf.sh and the site config
# ${config}: change that file, not this script.

# Site set-up (batch.env_setup).
${env_setup_lines}

exec ${pilot_command_lines}
