from casefetch.cli import main

main()
