"""`python -m integrations [serve | migrate | rewrap-keys]`: the integrations service and its commands."""

from integrations.app import INTEGRATIONS
from mesh.app import main

if __name__ == "__main__":
    main(INTEGRATIONS)
