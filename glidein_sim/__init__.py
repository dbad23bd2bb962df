"""glidein-sim: a discrete-event simulation in virtual time over the project's own scheduling code."""
