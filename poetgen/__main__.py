from poetgen.app.cli import main

main()
