from pushi.cli import main

main()
