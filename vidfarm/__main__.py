from vidfarm.cli import main

main()
