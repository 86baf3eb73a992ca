"""`python -m router`: the public Chat and Account API."""

from mesh.app import main
from router.app import ROUTER

main(ROUTER)
