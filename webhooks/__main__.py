"""`python -m webhooks [serve]`: the webhooks service."""

from mesh.app import main
from webhooks.app import WEBHOOKS

if __name__ == "__main__":
    main(WEBHOOKS)
