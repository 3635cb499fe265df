from binderbuild.app import main

main()
