from rag.cli.main.main import main

main()
