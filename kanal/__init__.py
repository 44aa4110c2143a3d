"""kanal: a contract-first commerce-ingestion API for WhatsApp marketing."""

__version__ = "0.1.0"

import warnings

# Connexion imports Starlette's test client at start-up, which warns about httpx
# on every server start; it is not used at run time.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
