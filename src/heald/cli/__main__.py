from heald.cli import main

main()
