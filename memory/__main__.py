"""`python -m memory [serve | migrate]`: the memory service, or only its migrations."""

from memory.app import MEMORY
from mesh.app import main

if __name__ == "__main__":
    main(MEMORY)
