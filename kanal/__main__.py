from kanal.cli import main

main()
