from pixclust.cli import main

main()
