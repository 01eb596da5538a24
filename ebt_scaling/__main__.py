from ebt_scaling.cli.main import main

main()
