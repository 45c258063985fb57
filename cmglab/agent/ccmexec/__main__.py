import sys

from cmglab.agent.ccmexec import main

sys.exit(main())
