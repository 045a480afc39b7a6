from crps_agent.cli import main

main()
