from cmglab.cli import main

main()
