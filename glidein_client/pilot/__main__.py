from glidein_client.pilot.cli import main

main()
