"""`python -m router`: the public Chat and Account API."""

from mesh.app import main
from router.app import ROUTER

if __name__ == "__main__":
    main(ROUTER)
