from casefetch_tools.cli import main

main()
