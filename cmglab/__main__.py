from cmglab.tools.cli import main

main()
