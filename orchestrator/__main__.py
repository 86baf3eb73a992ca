"""`python -m orchestrator`: seed the agent catalog into memory, then serve OrchestratorService."""

from mesh.app import main
from orchestrator.app import ORCHESTRATOR

main(ORCHESTRATOR)
