import sys

from glidein_sim.cli import main

sys.exit(main())
