from mamldqn_pl.cli import main

main()
