import sys

from cmglab.agent.ccmsetup import main

sys.exit(main())
