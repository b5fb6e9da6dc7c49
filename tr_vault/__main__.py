from tr_vault.cli import main

main()
