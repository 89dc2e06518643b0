"""`python -m node_agent` is `netmon-agent`."""
import sys

from node_agent.cli import main

sys.exit(main())
