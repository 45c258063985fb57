import sys

from client_agent.dsregcmd.cli import main

sys.exit(main())
