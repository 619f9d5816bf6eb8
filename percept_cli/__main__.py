from percept_cli.cli import main

main()
