"""`python -m orchestrator`: seed the agent catalog into memory, then serve OrchestratorService."""

from mesh.app import main
from orchestrator.app import ORCHESTRATOR

if __name__ == "__main__":
    main(ORCHESTRATOR)
