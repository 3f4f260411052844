from opsflow.cli import main

main()
