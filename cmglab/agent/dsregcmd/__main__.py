import sys

from cmglab.agent.dsregcmd.cli import main

sys.exit(main())
