import sys

from client_agent.ccmexec import main

sys.exit(main())
