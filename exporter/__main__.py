from exporter._entry import main

main()
