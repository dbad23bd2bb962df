#!/bin/bash
#PBS -N ${job_name}
#PBS -S /bin/bash
#PBS -l ${resources}
#PBS -l walltime=${walltime}
#PBS -j oe
#PBS -o ${output}
${directive_lines}
#
# glidein pilot ${job_name}, submitted by glidein-client's PBS backend (${flavour}).
# Rendered from glidein_client/site/schedulers/templates/pbs.sh and the site config
# ${config}: change that file, not this script.

# Site set-up (batch.env_setup).
${env_setup_lines}

cd ${workdir} || exit 97
exec ${pilot_command_lines}
