#!/bin/bash
#SBATCH --job-name=${job_name}
#SBATCH --comment=glidein
#SBATCH --chdir=${workdir}
#SBATCH --output=${output}
#SBATCH --error=${error}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=${time_limit}
${directive_lines}
#
# glidein pilot ${job_name}, submitted by glidein-client's Slurm backend.
# Rendered from glidein_client/site/schedulers/templates/slurm.sh and the site config
# ${config}: change that file, not this script.

# Site set-up (batch.env_setup).
${env_setup_lines}

exec ${pilot_command_lines}
