import sys

from client_agent.ccmsetup import main

sys.exit(main())
