from usedge.cli import main

main()
